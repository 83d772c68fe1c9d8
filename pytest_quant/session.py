"""One pytest session's models: the pairs, the one live model, loading, releasing and measuring each once.

Heavy libraries are imported here only when a model is opened.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable

import pytest

from .backends import LoadRequest, Registry
from .backends.checkpoint import quantization_method
from .backends.prequantized import PREQUANTIZED
from .hardware import device_kind, free_device_memory, hardware_name, placement_devices, placement_label
from .metrics import Measurements
from .models import ModelSource, embedded_calibration_text
from .options import QuantOptions
from .quant_model import Pair, QuantModel, holders  # noqa: F401 - holders: the release warning
from .recipes import BUILTIN_RECIPES, Recipe, runs_on
from .references import References
from .units import format_bytes

PROMPT_TOKENS = 128
# Decode steps, timed repeats and untimed warm-up runs per device kind.
THROUGHPUT = {"cuda": dict(decode_tokens=128, repeats=5, warmup_runs=3), "cpu": dict(decode_tokens=32, repeats=3, warmup_runs=1)}
EVAL_BATCH_WINDOWS = 8
RELEASE_SLACK_BYTES = 1 << 20
NEEDS = ("quality", "vram", "throughput")
FEW_TOKENS_DIVISOR = 2  # fewer than half the tokens asked for: warn (fail under --quant-strict)


def few_tokens_note(scored: int, asked: int, text: Path) -> str | None:
    """A warning when far fewer tokens are scored than --quant-eval-tokens asks for (a short eval text)."""
    if scored * FEW_TOKENS_DIVISOR >= asked:
        return None
    return (f"pytest-quant: only {scored} tokens of {text} scored, of the {asked} asked for (--quant-eval-tokens): "
            "perplexity and KL over so few tokens are mostly noise; give a longer --quant-eval-text")


class QuantSession:
    def __init__(self, options: QuantOptions, recipes: list[Recipe], registry: Registry,
                 progress: Callable[[str], None] = lambda message: None):
        self.options = options
        self.recipes = recipes
        self.registry = registry
        self.progress = progress
        self.pairs = [p for m in options.models for p in self._pairs_of(m, recipes)]
        self.references = References(self)
        self._known: dict[str, Measurements] = {}
        self._windows: dict[str, object] = {}
        self.eval_batch_windows = EVAL_BATCH_WINDOWS
        self._prompts = None
        self.live: QuantModel | None = None
        self._devices: tuple[str, ...] | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        """Where models load: the session's device, or every visible GPU under --quant-device auto."""
        if self._devices is None:
            self._devices = placement_devices(self.options.device, self.options.sharded)
        return self._devices

    @property
    def device_label(self) -> str:
        """The placement as reports show it, in the host's numbering ('cuda:3' in an xdist worker given GPU 3)."""
        return placement_label(self.devices)

    @staticmethod
    def _pairs_of(model: ModelSource, recipes: list[Recipe]) -> list[Pair]:
        """A checkpoint that is already quantized is gated as it is, under the recipe ``prequantized``."""
        if quantization_method(model.path) is not None:
            return [Pair(model, PREQUANTIZED)]
        return [Pair(model, r) for r in recipes]

    def reference_pair(self, model: ModelSource) -> Pair | None:
        if any(p.model == model and p.recipe is PREQUANTIZED for p in self.pairs):
            return None
        return Pair(model, BUILTIN_RECIPES["reference"])

    def known(self, pair: Pair) -> Measurements:
        """What is measured of ``pair`` so far, with its reference's figures beside."""
        m = self._known.get(pair.id) or Measurements(pair.model.name, pair.recipe.name, self.device_label,
                                                     is_reference=pair.recipe.is_reference)
        ref = None if pair.recipe.is_reference else self.reference_pair(pair.model)
        if ref is not None and ref.id in self._known:
            m = dataclasses.replace(m, reference=self._known[ref.id])
        return m

    def restore(self, pair: Pair, **figures) -> None:
        """Figures of ``pair`` read from a cache rather than measured in this session."""
        self._update(pair, **figures)

    def _update(self, pair: Pair, **figures) -> None:
        base = self._known.get(pair.id) or Measurements(pair.model.name, pair.recipe.name, self.device_label,
                                                        is_reference=pair.recipe.is_reference)
        self._known[pair.id] = dataclasses.replace(base, **figures)

    # -- what can run ---------------------------------------------------------------------------
    def unavailable_reason(self, pair: Pair) -> str | None:
        backend = self.registry[pair.recipe.backend]
        missing = backend.missing(pair.model.path)
        if missing:
            return f"recipe {pair.recipe.name}: {', '.join(missing)} not installed; install it with: {backend.install_hint}"
        if not runs_on(pair.recipe, self.registry, self.options.device):
            kinds = ", ".join(sorted(pair.recipe.devices or backend.devices))
            return f"recipe {pair.recipe.name} runs on {kinds}, not on {self.options.device}"
        return None

    # -- loading and releasing -----------------------------------------------------------------
    def open(self, pair: Pair) -> QuantModel:
        if not pair.recipe.is_reference and self.reference_pair(pair.model) is not None:
            self.references.ensure(pair.model)
        from .measure.vram import VramTracker

        trackers: list[VramTracker] = []
        device, devices = self.options.device, self.devices
        self.progress(f"loading {pair.model.name} under {pair.recipe.name} on {self.device_label}")
        start = time.perf_counter()
        loaded = self.registry[pair.recipe.backend].load_model(LoadRequest(
            model_path=pair.model.path, recipe=pair.recipe, device=device, cache_dir=Path(self.options.cache_dir),
            calibration_text=embedded_calibration_text(), device_map=self.options.device_map,
            before_load=lambda: trackers.append(VramTracker(device, devices))))
        tracker = trackers[-1]
        load_s = time.perf_counter() - start
        tracker.loaded()
        hardware = ", ".join(dict.fromkeys(hardware_name(d) for d in devices))
        self._update(pair, hardware=hardware, kernel=loaded.kernel, dtype=loaded.dtype, cache=loaded.cache,
                     load_s=load_s, quantize_s=loaded.quantize_seconds or None)
        quantized = f", quantized in {loaded.quantize_seconds:.1f} s" if loaded.quantize_seconds else ""
        cache = f", cache {loaded.cache}" if loaded.cache else ""
        self.progress(f"{pair.id} loaded in {load_s:.1f} s ({loaded.kernel}{quantized}{cache})")
        qm = QuantModel(self, pair, loaded, tracker)
        self.live = qm
        if pair.recipe.is_reference:
            try:
                self.measure(qm, self.references.needs)
            except BaseException:
                self.close(qm)  # a failed measurement must not keep the model on the device
                raise
            self.references.save(pair.model)
        return qm

    def close(self, qm: QuantModel) -> None:
        """Release a model and check that its GPU memory came back."""
        if self.live is qm:
            self.live = None
        model = weakref.ref(qm.model) if qm.model is not None else lambda: None
        qm.model = qm.tokenizer = qm._tracker = None
        left = sum(free_device_memory(d) for d in self.devices) - qm._allocated_before_bytes
        if left > RELEASE_SLACK_BYTES:
            held = holders(model()) if model() is not None else []
            warnings.warn(pytest.PytestWarning(
                f"pytest-quant: {format_bytes(left)} of GPU memory still allocated after releasing {qm._pair.id}; "
                + (f"the model is still held by {', '.join(held)}" if held else "something (a test, a global) "
                   "still holds the model") + ", and later VRAM figures may be inflated"))

    # -- measuring -----------------------------------------------------------------------------
    def windows_for(self, model: ModelSource, tokenizer=None):
        """The eval text's windows for this model's tokenizer, tokenized once per session."""
        from .measure.quality import EvalSpec, prepare

        if model.name not in self._windows:
            if tokenizer is None:
                from .backends.common import load_tokenizer

                tokenizer = load_tokenizer(model.path)
            spec = EvalSpec(text_path=self.options.eval_text, max_tokens=self.options.eval_tokens)
            try:
                windows, problem = prepare(tokenizer, spec, max_positions=_max_positions(model)), None
            except ValueError as exc:  # too few tokens: the file and the count, without a traceback
                windows, problem = None, f"--quant-eval-text: {exc}"
            if problem:
                pytest.fail(problem, pytrace=False)  # outside the except: no "During handling ..." above it
            few = few_tokens_note(windows.tokens_scored, self.options.eval_tokens, spec.text_path)
            if few and self.options.strict:
                pytest.fail(f"{few} (--quant-strict)", pytrace=False)
            if few:
                warnings.warn(pytest.PytestWarning(few))
            self._windows[model.name] = windows
        return self._windows[model.name]

    def eval_windows(self, qm: QuantModel):
        return self.windows_for(qm._pair.model, qm.tokenizer)

    def measure(self, qm: QuantModel, needs: frozenset[str]) -> Measurements:
        """Measure what is asked and not yet known: quality, then decode speed (the default batch as
        "throughput", another as "throughput:N"), then memory, read last so that it holds the peaks of the
        phases that ran (the evaluation's is reported, never budgeted)."""
        pair = qm._pair
        if qm.model is None:
            raise RuntimeError(f"pytest-quant: {pair.id} was released; measure it while the quant_model fixture is live")
        before = self._known[pair.id]
        if "quality" in needs and before.quality is None:
            with qm._tracker.phase("evaluate"):
                self._measure_quality(qm)
        for need in sorted(needs):
            if need == "throughput" or need.startswith("throughput:"):
                batch = int(need.partition(":")[2] or self.options.decode_batch)
                if self._known[pair.id].throughput_at(batch) is None:
                    with qm._tracker.phase("generate"):
                        self._measure_throughput(qm, batch)
            elif need.startswith("generation:") and not self._known[pair.id].has(need):
                self._measure_generation(qm, int(need.partition(":")[2]))
        after = self._known[pair.id]
        if ("vram" in needs and after.vram is None) or (after.vram is not None and after != before):
            self._update(pair, vram=qm._tracker.read(qm.model))
        return self.known(pair)

    def _measure_throughput(self, qm: QuantModel, batch: int) -> None:
        from .measure.roofline import memory_bandwidth_bytes_per_s, roofline_fraction
        from .measure.throughput import measure_throughput

        prompt = list(self.eval_windows(qm).windows[0].input_ids[:PROMPT_TOKENS])
        settings = THROUGHPUT[device_kind(qm.device)]
        self.progress(f"{qm._pair.id}: timing prefill and {settings['decode_tokens']} decode steps at batch {batch} "
                      f"({settings['warmup_runs']} warm-up + {settings['repeats']} timed runs)")
        start = time.perf_counter()
        # a model spread over GPUs decodes eagerly: accelerate's hooks move tensors between devices on the host
        mode = "eager" if self.options.sharded else "auto"
        throughput = measure_throughput(qm.model, prompt, batch_size=batch, mode=mode, **settings)
        timing_s = time.perf_counter() - start
        if throughput.fallback_reason:
            self.progress(f"{qm._pair.id}: decode timed eagerly: {throughput.fallback_reason}")
        if batch != self.options.decode_batch:
            known = self._known[qm._pair.id]
            self._update(qm._pair, other_batches=known.other_batches + (throughput,))
            return
        fraction = None if self.options.sharded else roofline_fraction(  # one GPU's bound: not a spread model's
            throughput.decode_tokens_per_s_per_sequence, int(qm.model.get_memory_footprint()),
            memory_bandwidth_bytes_per_s(qm.device))
        self._update(qm._pair, throughput=throughput, timing_s=timing_s, roofline_fraction=fraction)

    def _measure_quality(self, qm: QuantModel) -> None:
        from .measure.quality import evaluate

        pair = qm._pair
        windows = self.eval_windows(qm)
        self.progress(f"{pair.id}: evaluating {windows.tokens_scored} tokens in {len(windows.windows)} windows")
        if pair.recipe.is_reference:
            quality, kept, scores = evaluate(qm.model, windows, self.eval_batch_windows,
                                             keep_reference_top_k=self.options.reference_top_k)
            self.references.keep(pair.model, kept)
            # against itself: zero divergence and full agreement, by definition
            quality = dataclasses.replace(quality, mean_kl_nats=0.0, p99_kl_nats=0.0, top1_agreement_percent=100.0)
        else:
            reference = self.references.kept(pair.model)  # None for a pre-quantized checkpoint
            quality, _, scores = evaluate(qm.model, windows, self.eval_batch_windows, reference=reference)
        # only the statistics are kept, never the per-token arrays
        self._update(pair, quality=quality, stats=_stats(scores, pair.recipe.is_reference))
        kl = f", mean KL {quality.mean_kl_nats:.5f} nats" if quality.mean_kl_nats is not None else ""
        self.progress(f"{pair.id}: perplexity {quality.perplexity:.3f}{kl} ({quality.seconds:.1f} s)")

    def _measure_generation(self, qm: QuantModel, tokens: int) -> None:
        """Greedy generations on the session's prompts, compared with the reference's (generated once per model
        and number of tokens, kept by ``references``)."""
        from .measure.generation import agreement, greedy_generate
        from .prompts import render

        pair = qm._pair
        if not pair.recipe.is_reference and self.reference_pair(pair.model) is None:
            return  # a pre-quantized checkpoint: no reference to agree with
        prompts = self.prompts()
        self.progress(f"{pair.id}: generating {tokens} tokens greedily from {len(prompts)} prompts")
        generated = greedy_generate(qm.model, qm.tokenizer, [render(p, qm.tokenizer) for p in prompts], tokens)
        if pair.recipe.is_reference:
            self.references.keep_generations(pair.model, tokens, generated)
        reference = self.references.generations(pair.model, tokens)
        if reference is None:
            raise RuntimeError(f"pytest-quant: the reference of {pair.model.name} generated no {tokens} tokens this "
                               "session; a generation_agreement marker added after collection cannot be compared")
        found = agreement(reference, generated, tokens, prompts=[p.display for p in prompts], tokenizer=qm.tokenizer)
        self._update(pair, generations=self._known[pair.id].generations + (found,))
        self.progress(f"{pair.id}: {found.exact_match_percent:.1f}% of generations equal the reference's, "
                      f"{found.mean_prefix_tokens:.1f} tokens before the first divergence ({found.seconds:.1f} s)")

    def prompts(self):
        """The generation prompts: --quant-prompts, else openings of the embedded held-out text."""
        from .prompts import default_prompts, read_prompts

        if self._prompts is None:
            path = self.options.prompts
            self._prompts = read_prompts(path) if path is not None else default_prompts()
        return self._prompts


def _stats(scores, is_reference: bool):
    """llama.cpp's statistics from the per-token scores; the reference's against itself (its own perplexity
    with its SE); None without a reference (a pre-quantized checkpoint)."""
    from .measure.stats import quality_stats

    if is_reference:
        n = len(scores.logprob_target)
        return quality_stats(scores.logprob_target, scores.logprob_target, [0.0] * n, [True] * n)
    if scores.reference_logprob_target is None:
        return None
    return quality_stats(scores.logprob_target, scores.reference_logprob_target, scores.kl_nats, scores.top1_match)


def _max_positions(model: ModelSource) -> int | None:
    """The model's max_position_embeddings from its config.json (caps the eval context), without loading it."""
    from .backends.checkpoint import read_config

    value = read_config(model.path).get("max_position_embeddings")
    return int(value) if value else None
