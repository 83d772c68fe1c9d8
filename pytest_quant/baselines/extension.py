"""The syrupy extension: one JSON file per test under <baseline dir>/<model>/<hardware key>, written atomically;
only this hardware's files of this session's recipes are ever called unused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from syrupy.data import SnapshotCollections
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

from ..atomic import atomic_write
from ..hardware import device_kind
from .compare import compare
from .record import BaselineFormatError, dumps
from .rules import RULE
from .settings import SETTINGS_KEY, BaselineSettings


def _model_name(item: Any) -> str | None:
    callspec = getattr(item, "callspec", None)
    pair = callspec.params.get("quant_pair") if callspec is not None else None
    return getattr(getattr(pair, "model", None), "name", None)


class BaselineExtension(JSONSnapshotExtension):
    """syrupy's single-file JSON extension with tolerances, one file per test and hardware.

    Used on its own it compares every metric of the received record with the defaults for the record's
    device; :func:`bound` makes a subclass that compares the metrics a test gates, with its tolerances.
    """

    tolerances: dict[str, float] | None = None
    update: bool = False

    # where
    @classmethod
    def site(cls, test_location: PyTestLocation) -> Path | None:
        """``<baseline dir>/<model>/<hardware key>`` for a test of a model x recipe, else None."""
        config = getattr(test_location.item, "config", None)
        settings = config.stash.get(SETTINGS_KEY, None) if config is not None else None
        model = _model_name(test_location.item)
        if settings is None or model is None:
            return None
        return settings.root / model / settings.hardware

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        site = cls.site(test_location)
        if site is None:
            raise BaselineFormatError(f"{test_location.nodeid}: baselines are kept per model: the test needs the "
                                      "quant_model fixture and pytest-quant's plugin")
        return str(site)

    @classmethod
    def discovery_dirname(cls, *, test_location: PyTestLocation) -> str:
        site = cls.site(test_location)
        return str(site) if site is not None else ""

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        site, path = cls.site(test_location), Path(snapshot_location)
        return site is not None and path.parent == site and path.stem == cls.get_snapshot_name(test_location=test_location)

    def discover_snapshots(self, *, test_location: PyTestLocation, ignore_extensions: list[str] | None = None) -> SnapshotCollections:
        """The current hardware's files of this model that no collected test owns, for this session's recipes.

        A file owned by a collected test is never unused (its test ran, was skipped, deselected or
        failed before comparing); other hardware's folders and other recipes' files are never looked at.
        """
        discovered = SnapshotCollections()
        site = self.site(test_location)
        if site is None or not site.is_dir():
            return discovered
        settings: BaselineSettings = test_location.item.config.stash[SETTINGS_KEY]
        for path in sorted(site.glob(f"*.{self.file_extension}")):
            if path.name.startswith(".") or not path.is_file():
                continue
            if (site.parent.name, path.stem) in settings.owners or not _recipe_in(path, settings.recipes):
                continue
            discovered.add(self.read_snapshot_collection(snapshot_location=str(path)))
        return discovered

    # what
    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> str:
        return dumps(data)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        received = json.loads(serialized_data)
        tolerances = self.tolerances
        if tolerances is None:
            kind = device_kind(str(received["context"].get("device", "")))
            tolerances = {key: RULE[key].defaults[kind] for key in received["metrics"]}
        return compare(received, snapshot_data, tolerances).matches(self.update)

    # how
    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
        """Write atomically: a temporary file beside the target, then a rename, so a reader (or another
        pytest-xdist worker) sees the old file or the new one, never a torn one."""
        target = Path(snapshot_collection.location)
        data = next(iter(snapshot_collection)).data
        if not isinstance(data, str):
            raise TypeError(f"a baseline is text, got {type(data).__name__}")
        atomic_write(target, data)


def bound(tolerances: dict[str, float], update: bool) -> type[BaselineExtension]:
    """The extension comparing these metrics with these tolerances (a class: syrupy instantiates it)."""
    return type("BoundBaselineExtension", (BaselineExtension,), {"tolerances": dict(tolerances), "update": update})



def _recipe_in(path: Path, recipes: frozenset[str]) -> bool:
    """Whether a file belongs to one of this session's recipes (an unreadable file does: it is ours to report)."""
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))["context"]["recipe"]
    except Exception:
        return True
    return not isinstance(recipe, str) or recipe in recipes
