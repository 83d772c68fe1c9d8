"""One pytest session's models: loading, releasing, and measuring each model x recipe once.

Heavy libraries are imported here only when a model is opened.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import backends
from .gates import Metrics
from .models import ModelSource, embedded_calibration_text
from .options import QuantOptions, format_bytes
from .recipes import BUILTIN_RECIPES, PREQUANTIZED, Recipe

PROMPT_TOKENS = 128
# Decode steps, timed repeats and untimed warm-up runs per device kind.
THROUGHPUT = {"cuda": dict(decode_tokens=128, repeats=5, warmup_runs=3), "cpu": dict(decode_tokens=32, repeats=3, warmup_runs=1)}
EVAL_BATCH_WINDOWS = 8
RELEASE_SLACK_BYTES = 1 << 20
# Measured for every reference: its log-probabilities serve every recipe's KL, and its VRAM figure
# costs nothing once it has been evaluated.
REFERENCE_ALWAYS = frozenset({"quality", "vram"})


@dataclass(frozen=True)
class Pair:
    model: ModelSource
    recipe: Recipe

    @property
    def id(self) -> str:
        return f"{self.model.name}-{self.recipe.name}"


@dataclass
class PairState:
    """What this session has learnt about one model x recipe."""

    pair: Pair
    load_seconds: float | None = None
    quantize_seconds: float | None = None
    cache: str = ""
    kernel: str = ""
    dtype: str = ""
    vram: Any = None
    throughput: Any = None
    quality: Any = None
    roofline_fraction: float | None = None  # decode tokens/s over the memory-bandwidth bound (GPU)
    timing_seconds: float | None = None  # wall time of the throughput measurement, warm-up included
    notes: dict[str, Any] = field(default_factory=dict)


class QuantModel:
    """The ``quant_model`` fixture's value: a loaded model under one recipe, and its measurements."""

    def __init__(self, session: "QuantSession", pair: Pair, loaded: backends.Loaded, tracker):
        self._session = session
        self.pair = pair
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.recipe = pair.recipe
        self.device = session.options.device
        self.model_name = pair.model.name
        self.state = session.states[pair.id]
        self._tracker = tracker
        self.allocated_before_bytes = tracker.allocated_before_bytes  # what close() expects to be left

    def __repr__(self) -> str:
        return f"<QuantModel {self.pair.id} on {self.device}>"

    @property
    def quality(self):
        return self.measure("quality").quality

    @property
    def vram(self):
        return self.measure("vram").vram

    @property
    def throughput(self):
        return self.measure("throughput").throughput

    def measure(self, *needs: str, reference_needs: frozenset[str] = frozenset()) -> Metrics:
        return self._session.measure(self, frozenset(needs), reference_needs)


class QuantSession:
    def __init__(self, options: QuantOptions, recipes: list[Recipe], config: pytest.Config | None = None):
        self.options = options
        self.recipes = recipes
        self.config = config
        self.pairs = [p for m in options.models for p in self._pairs_of(m, recipes)]
        self.states: dict[str, PairState] = {p.id: PairState(p) for p in self.pairs}
        self.reference_needs: frozenset[str] = frozenset()  # set after collection from the markers
        self._reference_logprobs: dict[str, Any] = {}
        self._windows: dict[str, Any] = {}
        self.live: QuantModel | None = None

    @staticmethod
    def _pairs_of(model: ModelSource, recipes: list[Recipe]) -> list[Pair]:
        """A checkpoint that is already quantized is gated as it is, under the recipe ``prequantized``."""
        from .backends.gptqmodel import quantization_method

        if quantization_method(model.path) is not None:
            return [Pair(model, PREQUANTIZED)]
        return [Pair(model, r) for r in recipes]

    @staticmethod
    def has_reference(pair: Pair) -> bool:
        return pair.recipe is not PREQUANTIZED

    def progress(self, message: str) -> None:
        """A line in pytest's terminal for the long steps; quiet under -q and on xdist workers."""
        if self.config is None or self.config.get_verbosity() < 0:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(f"pytest-quant: {message}")
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"pytest-quant: {message}")

    # -- what can run ---------------------------------------------------------------------------
    def unavailable_reason(self, pair: Pair) -> str | None:
        backend = pair.recipe.backend
        missing = backends.missing_requirements(backend)
        if missing:
            return (f"recipe {pair.recipe.name}: {', '.join(missing)} not installed; "
                    f"install it with: {backends.install_hint(backend)}")
        if not backends.supports(backend, self.options.device):
            return f"recipe {pair.recipe.name}: backend {backend} does not run on {self.options.device}"
        return None

    # -- loading and releasing -----------------------------------------------------------------
    def state(self, pair: Pair) -> PairState:
        return self.states.setdefault(pair.id, PairState(pair))

    def open(self, pair: Pair) -> QuantModel:
        if not pair.recipe.is_reference and self.has_reference(pair):
            self.ensure_reference(pair.model)
        from .measure.vram import VramTracker

        trackers: list[VramTracker] = []
        state = self.state(pair)
        self.progress(f"loading {pair.model.name} under {pair.recipe.name} on {self.options.device}")
        start = time.perf_counter()
        loaded = backends.load(
            backends.LoadRequest(
                model_path=pair.model.path,
                recipe=pair.recipe,
                device=self.options.device,
                cache_dir=Path(self.options.cache_dir),
                calibration_text=embedded_calibration_text(),
                before_load=lambda: trackers.append(VramTracker(self.options.device)),
            )
        )
        tracker = trackers[-1]
        state.load_seconds = time.perf_counter() - start
        tracker.loaded()
        state.quantize_seconds, state.cache = loaded.quantize_seconds, loaded.cache
        state.kernel, state.dtype, state.notes = loaded.kernel, loaded.dtype, dict(loaded.notes)
        quantized = f", quantized in {loaded.quantize_seconds:.1f} s" if loaded.quantize_seconds else ""
        cache = f", cache {loaded.cache}" if loaded.cache else ""
        self.progress(f"{pair.id} loaded in {state.load_seconds:.1f} s ({loaded.kernel}{quantized}{cache})")
        qm = QuantModel(self, pair, loaded, tracker)
        self.live = qm
        if pair.recipe.is_reference:
            try:
                self.measure(qm, REFERENCE_ALWAYS | self.reference_needs, frozenset())
            except BaseException:
                self.close(qm)  # a failed measurement must not keep the model on the device
                raise
        return qm

    def close(self, qm: QuantModel) -> None:
        """Release a model and check that its GPU memory came back."""
        from .measure.vram import allocated_bytes

        if self.live is qm:
            self.live = None
        qm.model = qm.tokenizer = qm._tracker = None
        gc.collect()
        if self.options.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        left = allocated_bytes(self.options.device) - qm.allocated_before_bytes
        if left > RELEASE_SLACK_BYTES:
            warnings.warn(
                pytest.PytestWarning(
                    f"pytest-quant: {format_bytes(left)} of GPU memory still allocated after releasing {qm.pair.id}; "
                    "something (a test, a global) still holds the model, and later VRAM figures may be inflated"
                )
            )

    def ensure_reference(self, model: ModelSource) -> None:
        """Measure the unquantized model once per session, before any quantized variant loads."""
        ref = Pair(model, BUILTIN_RECIPES["reference"])
        state = self.state(ref)
        needed = REFERENCE_ALWAYS | self.reference_needs
        if model.name in self._reference_logprobs and all(getattr(state, n) is not None for n in needed):
            return
        if self.live is not None and self.live.pair == ref:
            self.measure(self.live, needed, frozenset())
            return
        self.close(self.open(ref))  # opening a reference measures what it must

    # -- measuring -----------------------------------------------------------------------------
    def eval_windows(self, qm: QuantModel):
        """The eval text's windows for this model's tokenizer, tokenized once per session."""
        from .measure.quality import EvalSpec, model_max_positions, prepare

        key = qm.pair.model.name
        if key not in self._windows:
            spec = EvalSpec(text_path=self.options.eval_text, max_tokens=self.options.eval_tokens)
            self._windows[key] = prepare(qm.tokenizer, spec, max_positions=model_max_positions(qm.model))
        return self._windows[key]

    def measure(self, qm: QuantModel, needs: frozenset[str], reference_needs: frozenset[str]) -> Metrics:
        """Measure what is asked and not yet known: quality first (VRAM is the peak over load +
        evaluation), then VRAM, then throughput."""
        state = qm.state
        is_ref = qm.recipe.is_reference
        if reference_needs - frozenset({"quality"}) and not is_ref and self.has_reference(qm.pair):
            self.ensure_reference_metrics(qm.pair.model, reference_needs)
        if needs & {"quality", "vram"} and state.quality is None:
            self._measure_quality(qm)
        if "vram" in needs and state.vram is None:
            state.vram = qm._tracker.read(qm.model)
        if "throughput" in needs and state.throughput is None:
            from .measure.throughput import measure_throughput

            prompt = list(self.eval_windows(qm).windows[0].input_ids[:PROMPT_TOKENS])
            settings = THROUGHPUT[backends.device_kind(qm.device)]
            self.progress(f"{qm.pair.id}: timing prefill and {settings['decode_tokens']} decode steps "
                          f"({settings['warmup_runs']} warm-up + {settings['repeats']} timed runs)")
            start = time.perf_counter()
            state.throughput = measure_throughput(qm.model, prompt, **settings)
            state.timing_seconds = time.perf_counter() - start
            from .measure.roofline import memory_bandwidth_bytes_per_s, roofline_fraction

            state.roofline_fraction = roofline_fraction(
                state.throughput.decode_tokens_per_s,
                int(qm.model.get_memory_footprint()),
                memory_bandwidth_bytes_per_s(qm.device),
            )
        return self.metrics(qm.pair)

    def ensure_reference_metrics(self, model: ModelSource, needs: frozenset[str]) -> None:
        ref = self.state(Pair(model, BUILTIN_RECIPES["reference"]))
        missing = [n for n in needs if getattr(ref, n) is None]
        if missing:
            raise RuntimeError(
                f"pytest-quant: the reference of {model.name} was measured without {', '.join(missing)}, "
                "which a test asks for; this is a bug in pytest-quant's collection of reference needs"
            )

    def _measure_quality(self, qm: QuantModel) -> None:
        from .measure.quality import evaluate

        windows = self.eval_windows(qm)
        self.progress(f"{qm.pair.id}: evaluating {windows.tokens_scored} tokens in {len(windows.windows)} windows")
        if qm.recipe.is_reference:
            quality, logprobs = evaluate(qm.model, windows, EVAL_BATCH_WINDOWS, keep_logprobs=True)
            self._reference_logprobs[qm.pair.model.name] = logprobs
            # against itself: zero divergence and full agreement, by definition
            quality = dataclasses.replace(quality, mean_kl_nats=0.0, p99_kl_nats=0.0, top1_agreement_percent=100.0)
        else:
            reference = self._reference_logprobs.get(qm.pair.model.name)  # None for a pre-quantized checkpoint
            quality, _ = evaluate(qm.model, windows, EVAL_BATCH_WINDOWS, reference_logprobs=reference)
        qm.state.quality = quality
        kl = f", mean KL {quality.mean_kl_nats:.5f} nats" if quality.mean_kl_nats is not None else ""
        self.progress(f"{qm.pair.id}: perplexity {quality.perplexity:.3f}{kl} ({quality.seconds:.1f} s)")

    def metrics(self, pair: Pair) -> Metrics:
        state = self.state(pair)
        ref_pair = Pair(pair.model, BUILTIN_RECIPES["reference"])
        if pair.recipe.is_reference:
            reference = None
        else:
            reference = self.metrics(ref_pair) if ref_pair.id in self.states else None
        return Metrics(
            model=pair.model.name,
            recipe=pair.recipe.name,
            device=self.options.device,
            vram=state.vram,
            throughput=state.throughput,
            quality=state.quality,
            reference=reference,
            is_reference=pair.recipe.is_reference,
        )
