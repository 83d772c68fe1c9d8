"""One session's baseline configuration: where files live, the hardware key, tolerances, who owns which file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..hardware import device_kind, environment, hardware_key, placement_devices, placement_key
from ..metrics import BASELINE_METRIC

SETTINGS_KEY = pytest.StashKey["BaselineSettings"]()


@dataclass
class BaselineSettings:
    """One session's baseline configuration, stashed on the config for the extension to find."""

    root: Path
    device: str
    rootpath: Path
    eval_text: Path
    recipes: frozenset[str]
    ini_tolerances: dict[tuple[str | None, str], float] = field(default_factory=dict)
    # (model, file stem) -> node ids of the collected tests that own that file
    owners: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _hardware: str | None = None
    _environment: dict[str, Any] | None = None
    _eval_sha256: str | None = None
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair id -> record.identity(...), once
    sharded: bool = False  # --quant-device auto: the key names every GPU a model is spread over
    # collectors skipped or broken at collection: their tests' files cannot be told from unused ones
    incomplete: list[str] = field(default_factory=list)
    fallback_hardware: str | None = None  # ini quant_baseline_fallback: whose quality baselines a new GPU kind uses

    @property
    def device_kind(self) -> str:
        return device_kind(self.device)

    @property
    def hardware(self) -> str:
        if self._hardware is None:
            self._hardware = (placement_key(placement_devices(self.device, True)) if self.sharded
                              else hardware_key(self.device))
        return self._hardware

    @property
    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            self._environment = environment(self.device)
        return self._environment

    @property
    def eval_sha256(self) -> str:
        if self._eval_sha256 is None:
            self._eval_sha256 = hashlib.sha256(self.eval_text.read_bytes()).hexdigest()
        return self._eval_sha256

    def tolerance(self, key: str) -> float:
        for kind in (self.device_kind, None):
            if (kind, key) in self.ini_tolerances:
                return self.ini_tolerances[(kind, key)]
        return BASELINE_METRIC[key].defaults[self.device_kind]

    def missing_line(self, model: str) -> str:
        """The one line for a GPU kind with no baselines of its own."""
        return (f"no baseline for {model}/{self.hardware}: speed and memory are recorded per GPU kind; record this "
                f"kind's with --snapshot-update (e.g. pytest suites --quant-gpu --snapshot-update) and commit "
                f"{self.show(self.root / model / self.hardware)}")

    def fallback(self, path: Path) -> Path | None:
        """The same test's baseline recorded on another CUDA kind, for its quality figures: the ini's
        ``quant_baseline_fallback`` hardware key when set, else the newest file (modification time, then name)."""
        site = path.parent
        model_dir = site.parent
        if not model_dir.is_dir():
            return None
        found = [d / path.name for d in sorted(model_dir.iterdir()) if d.is_dir() and not d.is_symlink()
                 and d.name not in ("cpu", site.name) and (d / path.name).is_file() and not (d / path.name).is_symlink()]
        if self.fallback_hardware:
            return next((p for p in found if p.parent.name == self.fallback_hardware), None)
        return max(found, key=lambda p: (p.stat().st_mtime_ns, p.parent.name), default=None)

    def show(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.relative_to(self.rootpath))
        except ValueError:
            return str(path)


def pair_of(item: Any) -> Any:
    """The model x recipe a test item is parametrized with by pytest-quant, or None."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("quant_pair") if callspec is not None else None


def model_name(item: Any) -> str | None:
    return getattr(getattr(pair_of(item), "model", None), "name", None)
