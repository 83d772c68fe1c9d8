"""One session's baseline configuration: where files live, the hardware key, tolerances, who owns which file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..hardware import device_kind, environment, hardware_key, placement_devices, placement_key
from .rules import RULE

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
        return RULE[key].defaults[self.device_kind]

    def show(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.relative_to(self.rootpath))
        except ValueError:
            return str(path)


def _model_name(item: Any) -> str | None:
    callspec = getattr(item, "callspec", None)
    pair = callspec.params.get("quant_pair") if callspec is not None else None
    return getattr(getattr(pair, "model", None), "name", None)
