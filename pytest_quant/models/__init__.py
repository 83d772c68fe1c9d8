"""The embedded default model and texts, and resolution of ``--quant-model`` values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TINY_DIR = Path(__file__).parent / "tiny"
EMBEDDED = {"tiny": TINY_DIR}


@dataclass(frozen=True)
class ModelSource:
    """A model to gate: a short name (used in test ids and baseline paths) and its folder."""

    name: str
    path: Path

    @property
    def is_embedded(self) -> bool:
        return self.path.parent == Path(__file__).parent


def embedded_eval_text() -> Path:
    """Persuasion (held out from training), paragraphs unwrapped."""
    return TINY_DIR / "eval.txt"


def embedded_calibration_text() -> Path:
    """A 60,000-character slice of Northanger Abbey (held out from training and evaluation)."""
    return TINY_DIR / "calibration.txt"


def resolve_model(value: str) -> ModelSource:
    """``tiny`` or a local folder holding a transformers ``config.json``."""
    if value in EMBEDDED:
        return ModelSource(value, EMBEDDED[value])
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"--quant-model {value!r}: no such folder; give a local model folder or one of {sorted(EMBEDDED)}"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"--quant-model {value!r}: {path} has no config.json, so it is not a transformers model folder")
    from ..backends.checkpoint import read_config
    from ..qcache import WEIGHT_SUFFIXES

    try:
        read_config(path)
    except ValueError as exc:
        raise ValueError(f"--quant-model {value!r}: {exc}") from None
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir() if p.is_file()):
        raise ValueError(f"--quant-model {value!r}: {path} has a config.json but no weight files "
                         f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    return ModelSource(_short_name(path), path.resolve())


def _short_name(path: Path) -> str:
    name = path.resolve().name.lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")
    return cleaned or "model"
