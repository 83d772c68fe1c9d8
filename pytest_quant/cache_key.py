"""The plugin's cache key, for CI caches of ``--quant-cache-dir`` (``python -m pytest_quant cache-key``).

The key hashes what decides whether cached quantized models and cached references can be reused: the cache
format, the pytest-quant version, the installed versions of the quantization libraries, and the project's
``[tool.pytest-quant]`` table and ``quant_*`` ini keys in ``pyproject.toml``. Model weights are not hashed
here: every cache entry is keyed by the sha256 of the weights and checks its own files on each lookup, so a
cache restored from an older key is rebuilt where it is stale or damaged, not used. An entry forged whole,
with a manifest to match, is as trusted as whoever could write the cache: key CI caches per trust boundary.
Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

from . import __version__
from .hardware import LIBRARIES, library_versions
from .qcache import FORMAT

# Beside hardware.LIBRARIES, the backends whose output is cached (Intel Neural Compressor installs as
# neural-compressor-pt for PyTorch, or as the full neural-compressor: both are recorded).
KEY_LIBRARIES: tuple[str, ...] = (*LIBRARIES, "torchao", "onnxruntime", "neural-compressor", "neural-compressor-pt",
                                  "nvidia-modelopt")
PREFIX = f"pytest-quant-q{FORMAT}-"
DEFAULT_PYPROJECT = Path("pyproject.toml")
_HEX_DIGITS = 16


class SettingsError(ValueError):
    """A pyproject.toml that cannot be read or parsed; the message names the path."""


@dataclass(frozen=True)
class CacheKey:
    """The key and what it was computed from (``pyproject`` is shown, never hashed: checkouts move)."""

    key: str
    inputs: Mapping[str, Any]
    pyproject: Path | None

    def explain(self) -> dict[str, Any]:
        return {"key": self.key, "pyproject": str(self.pyproject) if self.pyproject else None,
                "inputs": dict(self.inputs)}


def project_settings(pyproject: Path) -> dict[str, Any]:
    """``[tool.pytest-quant]`` and the ``quant_*`` keys of ``[tool.pytest.ini_options]`` of ``pyproject``."""
    try:
        data = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{pyproject}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{pyproject}: not valid TOML ({exc})") from None
    tool = _table(data, "tool")
    ini = _table(_table(tool, "pytest"), "ini_options")
    return {"tool.pytest-quant": tool.get("pytest-quant", {}),
            "tool.pytest.ini_options": {k: v for k, v in sorted(ini.items()) if k.startswith("quant_")}}


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    return value if isinstance(value, dict) else {}


def key_inputs(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything the key hashes; ``settings`` is None without a pyproject.toml."""
    return {"format": FORMAT, "pytest-quant": __version__,
            "libraries": library_versions(KEY_LIBRARIES, missing="-"), "settings": settings}


def digest(inputs: Mapping[str, Any]) -> str:
    """``pytest-quant-q<FORMAT>-<16 hex>`` over the canonical JSON of ``inputs``."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:_HEX_DIGITS]


def compute(pyproject: Path | None = None) -> CacheKey:
    """The key for ``pyproject`` (must exist), or for ``./pyproject.toml`` when there is one."""
    if pyproject is None and DEFAULT_PYPROJECT.is_file():
        pyproject = DEFAULT_PYPROJECT
    settings = project_settings(pyproject) if pyproject is not None else None
    inputs = key_inputs(settings)
    return CacheKey(digest(inputs), inputs, pyproject)
