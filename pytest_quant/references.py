"""The unquantized references: each model's measured once per session, before any variant of it loads, and
cached on disk so that a later run whose tests need only its quality figures (or its resident memory) does
not load it again.

What to measure of a reference is decided once, after collection, from every collected test's markers
(and whether a test asks for ``quant_reference``). Its predictions over the eval windows are kept in the
compact form of ``measure.reference`` (top-k log-probabilities and tail samples: at most 64 MiB for 8192
tokens whatever the vocabulary) for every recipe's KL divergence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .metrics import Measurements
from .models import ModelSource

# Always measured: its predictions serve every recipe's KL, and its memory costs nothing more.
ALWAYS = frozenset({"quality", "vram"})
# What a cached reference can stand in for without loading the model.
CACHEABLE = frozenset({"quality", "vram"})
CACHE_SUBDIR = "references"
KEY_LIBRARIES = ("torch", "transformers", "accelerate")


class References:
    """The references of one session (``session`` is the ``QuantSession`` that loads and measures them)."""

    def __init__(self, session: Any, needs: frozenset[str] = frozenset()):
        self._session = session
        self.needs = ALWAYS | needs
        self._kept: dict[str, Any] = {}
        self._generations: dict[tuple[str, int], Any] = {}

    def plan(self, needs: frozenset[str]) -> None:
        """What every reference must have measured: set once, after collection."""
        self.needs = ALWAYS | needs

    def measured(self, model: ModelSource) -> bool:
        m = self._session.known(self._session.reference_pair(model))
        return model.name in self._kept and all(_has(m, need) for need in self.needs)

    def ensure(self, model: ModelSource) -> Measurements:
        """The reference's measurements: from this session, else from the disk cache when that holds all that
        is needed, else loaded and measured now."""
        pair = self._session.reference_pair(model)
        if pair is None:
            raise LookupError(f"{model.name} is a pre-quantized checkpoint: it has no unquantized reference")
        if not self.measured(model) and not (self.needs <= CACHEABLE and self._restore(model)):
            live = self._session.live
            if live is not None and live._pair == pair:
                self._session.measure(live, self.needs)
            else:
                self._session.close(self._session.open(pair))  # opening a reference measures self.needs
        return self._session.known(pair)

    def keep(self, model: ModelSource, kept: Any) -> None:
        self._kept[model.name] = kept

    def kept(self, model: ModelSource) -> Any:
        """The reference's kept predictions over the eval windows, or None for a model without a reference."""
        return self._kept.get(model.name)

    def keep_generations(self, model: ModelSource, tokens: int, generations: Any) -> None:
        """The reference's greedy generations of ``tokens`` tokens on the session's prompts."""
        self._generations[(model.name, tokens)] = generations

    def generations(self, model: ModelSource, tokens: int) -> Any:
        return self._generations.get((model.name, tokens))

    # -- the disk cache ------------------------------------------------------------------------------
    def _path(self, model: ModelSource) -> tuple[Path, str]:
        from .backends.common import default_dtype
        from .hardware import library_versions, placement_key
        from .qcache import model_fingerprint

        options = self._session.options
        root = Path(options.cache_dir) / CACHE_SUBDIR
        windows = self._session.windows_for(model)
        digest = hashlib.sha256()
        for window in windows.windows:
            digest.update(json.dumps([window.input_ids, window.target_ids]).encode())
        inputs = {
            "model": model_fingerprint(model.path, root),
            "windows": digest.hexdigest(),
            "eval_batch_windows": self._session.eval_batch_windows,
            "dtype": str(default_dtype(model.path, options.device)),
            # the GPU kind, not just "cuda": the cached figures include its VRAM, and workers of one host may
            # have different GPUs (a model spread over GPUs: all of them)
            "hardware": placement_key(self._session.devices),
            "top_k": str(options.reference_top_k),
            "versions": library_versions(KEY_LIBRARIES),
        }
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
        return root / f"{model.name}-{key}.safetensors", key

    def save(self, model: ModelSource) -> None:
        """Write the reference's kept predictions and figures to the cache (a failure to write is not fatal)."""
        from .measure.reference import save_reference

        m = self._session.known(self._session.reference_pair(model))
        kept = self._kept.get(model.name)
        if kept is None or m.quality is None or m.vram is None:
            return
        path, key = self._path(model)
        figures = {"quality": dataclasses.asdict(m.quality), "vram": dataclasses.asdict(m.vram),
                   "kernel": m.kernel, "dtype": m.dtype, "hardware": m.hardware}
        if m.stats is not None:  # its own perplexity's standard error, among others
            figures["stats"] = dataclasses.asdict(m.stats)
        try:
            save_reference(path, kept, key, {"figures": json.dumps(figures)})
        except OSError as exc:
            self._session.progress(f"{model.name}: could not cache the reference in {path}: {exc}")

    def _restore(self, model: ModelSource) -> bool:
        from .measure.quality import QualityMeasurement
        from .measure.reference import load_reference
        from .measure.stats import QualityStats
        from .measure.vram import VramMeasurement

        path, key = self._path(model)
        found = load_reference(path, key)
        if found is None:
            return False
        kept, metadata = found
        try:
            figures = json.loads(metadata["figures"])
            quality = QualityMeasurement(**figures["quality"])
            vram = VramMeasurement(**figures["vram"])
            stats = QualityStats(**figures["stats"]) if "stats" in figures else None
        except (KeyError, TypeError, ValueError):
            return False
        self._kept[model.name] = kept
        self._session.restore(self._session.reference_pair(model), quality=quality, vram=vram, stats=stats,
                              kernel=figures.get("kernel", ""), dtype=figures.get("dtype", ""),
                              hardware=figures.get("hardware", ""), cache="hit")
        self._session.progress(f"{model.name}: reference figures from the cache ({path.name}); not loaded")
        return True


def _has(m: Measurements, need: str) -> bool:
    return m.has(need)  # "generation:N" too
