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
from ..metrics import BASELINE_METRIC
from .compare import Outcome, compare
from .record import FORMAT_VERSION, BaselineFormatError, dumps
from .settings import SETTINGS_KEY, BaselineSettings, model_name


class BaselineExtension(JSONSnapshotExtension):
    """syrupy's single-file JSON extension with tolerances, one file per test and hardware.

    Used on its own it compares every metric of the received record with the defaults for the record's
    device; :func:`bound` makes a subclass that compares the metrics a test gates, with its tolerances.
    """

    tolerances: dict[str, float] | None = None
    update: bool = False
    received: dict[str, Any] | None = None  # the raw record, compared instead of its rounded text
    outcomes: list[Outcome] | None = None  # where the one comparison's outcome is handed back to the gate

    # where
    @classmethod
    def site(cls, test_location: PyTestLocation) -> Path | None:
        """``<baseline dir>/<model>/<hardware key>`` for a test of a model x recipe, else None."""
        config = getattr(test_location.item, "config", None)
        settings = config.stash.get(SETTINGS_KEY, None) if config is not None else None
        model = model_name(test_location.item)
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
        if settings.incomplete:  # a module skipped or broken at collection: its tests' files are not unused
            return discovered
        for path in sorted(site.glob(f"*.{self.file_extension}")):
            if path.name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            if (site.parent.name, path.stem) in settings.owners or not _baseline_of(path, settings.recipes):
                continue
            discovered.add(self.read_snapshot_collection(snapshot_location=str(path)))
        return discovered

    # what
    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> str:
        return dumps(data)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        """The one comparison: the raw record (when bound) against the stored text; its outcome is handed back
        to the gate, which reports from it and never compares again."""
        received = self.received if self.received is not None else json.loads(serialized_data)
        tolerances = self.tolerances
        if tolerances is None:
            kind = device_kind(str(received["context"].get("device", "")))
            tolerances = {key: BASELINE_METRIC[key].defaults[kind] for key in received["metrics"]}
        outcome = compare(received, snapshot_data, tolerances)
        if self.outcomes is not None:
            self.outcomes.append(outcome)
        return outcome.matches(self.update)

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


def bound(tolerances: dict[str, float], update: bool, received: dict[str, Any],
          outcomes: list[Outcome]) -> type[BaselineExtension]:
    """The extension comparing ``received`` with these tolerances (a class: syrupy instantiates it); the
    comparison's outcome is appended to ``outcomes``."""
    return type("BoundBaselineExtension", (BaselineExtension,), {"tolerances": dict(tolerances), "update": update,
                                                                 "received": received, "outcomes": outcomes})


def _baseline_of(path: Path, recipes: frozenset[str]) -> bool:
    """Whether a file is a baseline of one of this session's recipes: a file that is not a baseline record (a
    user's notes, an unreadable file) is never called unused, so never deleted."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or not isinstance(data.get("metrics"), dict):
        return False
    context = data.get("context")
    return isinstance(context, dict) and context.get("recipe") in recipes
