"""The unquantized references: each model's measured once per session, before any variant of it opens, and
cached on disk so that a later run whose tests need only its quality figures (or its resident memory) does
not load it again.

What to measure of a reference is decided once, after collection, from every collected test's markers
(``plan``). Its predictions over the eval windows are kept in the compact form of ``measure.reference`` for
every recipe's KL divergence, and its greedy generations for generation agreement: both are owned here.

A cached entry is used only when it is consistent with this run's inputs (its key: content hashes of the
weights, the eval windows, versions, hardware) and with itself: its quality figures are derived again from the
per-token log-probabilities stored beside them and must agree, else it is measured again, with a line saying why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

from ..metrics import Measurements
from ..models import ModelSource
from ..models.vision import is_image_text_to_text
from .inputs import Inputs
from .ledger import Ledger
from .live import Live, LiveModel, Placement
from .measurer import Measurer, ReferenceData
from .pairs import Pair, Pairing

# Always measured: its predictions serve every recipe's KL, and its memory costs nothing more.
ALWAYS = frozenset({"quality", "vram"})
# What a cached reference can stand in for without loading the model (its task answers and layer data are kept
# beside it: run.reference_extras).
CACHEABLE = frozenset({"quality", "vram", "tasks", "layers"})
CACHE_SUBDIR = "references"
KEY_LIBRARIES = ("torch", "transformers", "accelerate")
CONSISTENT_REL = 1e-6  # stored figures against the same figures derived from the stored log-probabilities


class References:
    def __init__(self, pairing: Pairing, ledger: Ledger, live: Live, measurer: Measurer, inputs: Inputs,
                 placement: Placement, cache_dir: Path, top_k: int | str, progress: Callable[[str], None]):
        self._pairing = pairing
        self._ledger = ledger
        self._live = live
        self._measurer = measurer
        self._inputs = inputs
        self._placement = placement
        self._cache_dir = cache_dir
        self._top_k = top_k
        self._progress = progress
        self.needs = ALWAYS
        self._tasks_for: frozenset[str] | None = None
        self._data: dict[str, ReferenceData] = {}

    def plan(self, needs: frozenset[str], tasks_for: frozenset[str] | None = None) -> None:
        """What every reference must have measured: set once, after collection. The task items are answered only
        by the references ``tasks_for`` names (pair ids; None: all), those whose own tests or variants' need them."""
        self.needs = ALWAYS | needs
        self._tasks_for = tasks_for

    def needs_of(self, pair: Pair) -> frozenset[str]:
        """What the reference ``pair`` must have measured (``tasks`` only where planned for it)."""
        if "tasks" in self.needs and self._tasks_for is not None and pair.id not in self._tasks_for:
            return self.needs - {"tasks"}
        return self.needs

    def data(self, pair: Pair) -> ReferenceData | None:
        """What a variant compared with the reference ``pair`` is compared with (None: not measured yet)."""
        return self._data.get(pair.id)

    def _measured(self, pair: Pair) -> bool:
        m = self._ledger.own(pair)
        return self.data(pair) is not None and self.data(pair).kept is not None \
            and all(m.has(need) for need in self.needs_of(pair))

    def ensure(self, pair: Pair) -> Measurements:
        """The reference ``pair``'s measurements (``Pairing.reference_of``): from this session, else from the disk
        cache when that holds all that is needed, else loaded and measured now (or in place when it is live)."""
        model = pair.model
        if not self._measured(pair) and not (self.needs_of(pair) <= CACHEABLE and self._restore(model, pair)):
            current = self._live.current
            if current is not None and current.pair == pair:
                self.measure_live(current)
            else:
                live = self._live.open(pair)
                try:
                    self.measure_live(live)
                finally:
                    self._live.close(live)
        return self._ledger.known(pair)

    def measure_live(self, live: LiveModel, needs: frozenset[str] = frozenset()) -> None:
        """Measure the live reference for what the session needs (and ``needs``), keep what it leaves, and cache
        it when its predictions were made now."""
        model, pair = live.pair.model, live.pair
        # its decode in every lower mode only when a variant's min_ratio will compare with it (planned needs)
        every_mode = any(need.startswith("throughput") for need in self.needs)
        left = self._measurer.measure(live, self.needs_of(pair) | needs, None, every_mode=every_mode)
        data = self._data.setdefault(pair.id, ReferenceData())
        data.generations.update(left.generations)
        data.tasks = left.tasks if left.tasks is not None else data.tasks
        data.layers = left.layers if left.layers is not None else data.layers
        data.answers = left.answers if left.answers is not None else data.answers
        if left.tasks is not None and left.kept is None and pair.recipe.backend == "reference":
            self._save_extras(model, data)  # answered after its predictions were cached
        if left.kept is not None:
            data.kept = left.kept
            # a GGUF reference is measured each session (not cached), and so is an image-text-to-text model's: its
            # predictions are over its own answers to the image prompts, made in the session
            if pair.recipe.backend == "reference" and not is_image_text_to_text(model.path):
                self._save(model)

    # -- the disk cache ------------------------------------------------------------------------------
    def _path(self, model: ModelSource) -> tuple[Path, str]:
        from ..backends.common import default_dtype
        from ..hardware import library_versions, placement_key
        from ..qcache import model_fingerprint

        root = self._cache_dir / CACHE_SUBDIR
        windows = self._inputs.windows(model)
        digest = hashlib.sha256()
        for window in windows.windows:
            digest.update(json.dumps([window.input_ids, window.target_ids]).encode())
        inputs = {
            "model": model_fingerprint(model.path, root),
            "windows": digest.hexdigest(),
            "eval_batch_windows": self._inputs.batch_windows,
            "dtype": str(default_dtype(model.path, self._placement.device)),
            # the GPU kind, not just "cuda": the cached figures include its VRAM, and workers of one host may
            # have different GPUs (a model spread over GPUs: all of them)
            "hardware": placement_key(self._placement.devices),
            "top_k": str(self._top_k),
            "versions": library_versions(KEY_LIBRARIES),
        }
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
        return root / f"{model.name}-{key}.safetensors", key

    def _save(self, model: ModelSource) -> None:
        """Write the reference's kept predictions and figures to the cache (a failure to write is not fatal)."""
        from ..measure.reference import save_reference

        pair = self._pairing.reference_of(model)
        m = self._ledger.own(pair)
        data = self.data(pair)
        if data is None or data.kept is None or m.quality is None or m.vram is None:
            return
        path, key = self._path(model)
        figures = {"quality": dataclasses.asdict(m.quality), "vram": dataclasses.asdict(m.vram),
                   "kernel": m.kernel, "dtype": m.dtype, "hardware": m.hardware}
        if m.stats is not None:  # its own perplexity's standard error, among others
            figures["stats"] = dataclasses.asdict(m.stats)
        try:
            save_reference(path, data.kept, key, {"figures": json.dumps(figures)})
            self._save_extras(model, data)
        except OSError as exc:
            self._progress(f"{model.name}: could not cache the reference in {path}: {exc}")

    def _restore(self, model: ModelSource, pair: Pair) -> bool:
        if pair.recipe.backend != "reference" or is_image_text_to_text(model.path):
            return False  # only the Hugging Face reference of a text model is cached on disk
        from ..measure.quality import QualityMeasurement
        from ..measure.reference import load_reference
        from ..measure.stats import QualityStats
        from ..measure.vram import VramMeasurement

        path, key = self._path(model)
        found = load_reference(path, key)
        if found is None:
            if path.exists():
                self._progress(f"{model.name}: the cached reference {path.name} cannot be read (truncated, or "
                               "another format): measuring it again")
            elif any(len(p.stem) == len(path.stem) for p in path.parent.glob(f"{model.name}-*.safetensors")):
                # same name and key length: "tiny-<key>", never "tiny-2-<key>"
                self._progress(f"{model.name}: no cached reference for this run's inputs (the weights' content, the "
                               "eval windows, the dtype, the GPU kind, top-k or the library versions changed since "
                               "one was cached): measuring it again")
            return False
        kept, metadata = found
        try:
            figures = json.loads(metadata["figures"])
            quality = QualityMeasurement(**figures["quality"])
            vram = VramMeasurement(**figures["vram"])
            stats = QualityStats(**figures["stats"]) if "stats" in figures else None
        except (KeyError, TypeError, ValueError) as exc:
            self._progress(f"{model.name}: the cached reference {path.name} has unreadable figures ({exc}): "
                           "measuring it again")
            return False
        problem = inconsistency(kept, quality, stats, self._inputs.windows(model).tokens_scored)
        if problem:
            self._progress(f"{model.name}: the cached reference {path.name} is not consistent with itself ({problem}): "
                           "measuring it again")
            return False
        extras = self._restore_extras(model, pair, path, key)
        if extras is None:
            return False
        data = self._data.setdefault(pair.id, ReferenceData())
        data.kept, data.tasks, data.layers = kept, extras.tasks, extras.layers
        self._ledger.record(pair, quality=quality, vram=vram, stats=stats,
                            kernel=figures.get("kernel", ""), dtype=figures.get("dtype", ""),
                            hardware=figures.get("hardware", ""), cache="hit")
        self._progress(f"{model.name}: reference figures from the cache ({path.name}); not loaded")
        return True


    def _save_extras(self, model: ModelSource, data: ReferenceData) -> None:
        from .reference_extras import save_extras

        path, key = self._path(model)
        save_extras(path, key, data, self._inputs)

    def _restore_extras(self, model: ModelSource, pair: Pair, path: Path, key: str):
        """The cached task answers and layer data (what this run needs of them), recorded; None when a needed one
        cannot be used (the reference is then measured again, with a line saying why)."""
        from .reference_extras import restore_extras

        found, problem = restore_extras(path, key, self._inputs, model, needs=self.needs_of(pair))
        if problem:
            self._progress(f"{model.name}: the cached reference {path.name}: {problem}: measuring it again")
            return None
        self._ledger.record(pair, **found.figures)
        return found


def inconsistency(kept, quality, stats, tokens_scored: int) -> str | None:
    """Why a cached reference's stored figures cannot be what its stored log-probabilities give (None: they
    agree). The figures a gate reads of the reference (perplexity, its SE, the scored tokens) are derived again
    from the per-token log-probabilities; memory figures have no data beside them and are as trusted as the cache."""
    from ..measure.stats import quality_stats

    if kept.tokens_scored != tokens_scored or quality.tokens_scored != tokens_scored:
        return (f"{kept.tokens_scored} kept tokens and {quality.tokens_scored} in its figures, this run scores "
                f"{tokens_scored}")
    logprobs = kept.logprob_target.double()
    if not bool(logprobs.isfinite().all()) or bool((logprobs > 0).any()):
        return "its log-probabilities are not all finite and <= 0"
    n = len(logprobs)
    derived = quality_stats(logprobs, logprobs, [0.0] * n, [True] * n)
    checks = [("perplexity", quality.perplexity, derived.perplexity),
              ("nll_nats_per_token", quality.nll_nats_per_token, derived.nll_nats_per_token)]
    if stats is not None:
        checks += [(f"stats.{f.name}", getattr(stats, f.name), getattr(derived, f.name))
                   for f in dataclasses.fields(stats) if isinstance(getattr(derived, f.name), float)]
    for name, stored, expected in checks:
        if not isinstance(stored, (int, float)) or not _close(float(stored), expected):
            return f"{name} {stored!r} stored, {expected!r} from its log-probabilities"
    return None


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= CONSISTENT_REL * max(abs(a), abs(b), 1e-12)
