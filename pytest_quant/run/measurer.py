"""What a test needs, measured on the live model through ``measure/*``, and written to the ledger.

Needs are "quality", "vram", "throughput" (the session's decode batch), "throughput:N" (another batch),
"generation:N" (greedy generations of N tokens against the reference's), "tasks" (the task items answered, against
the reference's answers) and "layers" (each decoder layer's own error; also measured, cheaply, with quality and
tasks, so that a failed quality gate can name the worst layers). The reference's kept predictions, generations,
task answers and layer data are returned to the caller (``references``), never stored here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from ..hardware import device_kind
from ..models.vision import is_image_text_to_text
from .inputs import Inputs
from .ledger import Ledger
from .live import LiveModel

NEEDS = ("quality", "vram", "throughput")  # what a report or the quant_reference fixture shows of every pair
PROMPT_TOKENS = 128
# Decode steps, timed repeats and untimed warm-up runs per device kind.
THROUGHPUT = {"cuda": dict(decode_tokens=128, repeats=5, warmup_runs=3), "cpu": dict(decode_tokens=32, repeats=3, warmup_runs=1)}


@dataclass
class ReferenceData:
    """What a variant is compared with: the reference's kept predictions over the eval windows (KL) and its
    greedy generations by number of tokens (generation agreement)."""

    kept: Any = None
    generations: dict[int, Any] = field(default_factory=dict)
    tasks: Any = None  # measure.tasks.TaskAnswers
    layers: Any = None  # measure.layers.LayerReference
    answers: Any = None  # measure.vision.AnswerWindows: an image-text-to-text reference's answers, scored by its variants


@dataclass(frozen=True)
class MeasureSettings:
    decode_batch: int
    sharded: bool
    reference_top_k: int | str
    decode_mode: str = "eager"  # --quant-decode-mode (compiled, cuda-graph, eager)
    compile_cache_dir: Path | None = None  # where inductor and Triton keep their caches
    timing_budget_s: float | None = None  # --quant-timing-budget: the most seconds one timed decode may take


def decode_mode_of(recipe, settings: MeasureSettings) -> str:
    """The mode a pair's decode is timed in: the session's, lowered by a recipe that pins a lower one (its compile
    takes minutes, its kernels cannot be captured); eager for a model spread over GPUs (accelerate's hooks move
    tensors between devices on the host, which a graph cannot capture)."""
    from ..measure.throughput import CHAIN, EAGER

    if settings.sharded:
        return EAGER
    pinned = getattr(recipe, "decode_mode", None)
    if pinned is None:
        return settings.decode_mode
    return max(settings.decode_mode, pinned, key=CHAIN.index)


class Measurer:
    def __init__(self, ledger: Ledger, inputs: Inputs, settings: MeasureSettings, progress: Callable[[str], None],
                 images=None):
        self._ledger = ledger
        self._inputs = inputs
        self._images = images  # run.images.ImageInputs: the image prompts of image-text-to-text models
        self._settings = settings
        self._progress = progress

    def measure(self, live: LiveModel, needs: frozenset[str], reference: ReferenceData | None,
                every_mode: bool = False) -> ReferenceData:
        """Measure what is asked and not yet known: quality, then decode speed, then generations, then memory,
        read last so that it holds the peaks of the phases that ran (the evaluation's is reported, never
        budgeted). ``reference``: what the reference left to compare with (None for the reference itself and a
        pre-quantized checkpoint). ``every_mode``: time decode in every mode below the pair's too (a reference whose
        variants' min_ratio may run in a lower mode). Returns what this model leaves for others to compare with (its kept
        predictions and generations, when it is a reference)."""
        pair = live.pair
        if live.model is None:
            raise RuntimeError(f"pytest-quant: {pair.id} was released; measure it while the quant_model fixture is live")
        left = ReferenceData()
        before = self._ledger.own(pair)
        # memory is read with the evaluation's peak in it: asking for memory runs the quality pass first
        if ("quality" in needs or "vram" in needs) and before.quality is None:
            with live.tracker.phase("evaluate"):
                left.kept = self._quality(live, reference, left)
        for need in sorted(needs):
            if need == "throughput" or need.startswith("throughput:"):
                batch = int(need.partition(":")[2] or self._settings.decode_batch)
                if self._ledger.own(pair).throughput_at(batch) is None:
                    with live.tracker.phase("generate"):
                        self._throughput(live, batch, every_mode)
            elif need.startswith("generation:") and not self._ledger.own(pair).has(need):
                tokens = int(need.partition(":")[2])
                generated = self._generation(live, tokens, reference)
                if generated is not None:
                    left.generations[tokens] = generated
            elif need == "tasks" and self._ledger.own(pair).tasks is None:
                from .tasks import measure_tasks

                left.tasks = measure_tasks(live, self._inputs, self._ledger, reference, self._progress)
        own = self._ledger.own(pair)
        if own.layers is None and ("layers" in needs or own.quality is not None or own.tasks is not None):
            from .layers import measure_layers

            left.layers = measure_layers(live, self._inputs, self._ledger, reference, self._progress,
                                         required="layers" in needs and not pair.recipe.is_reference)
        elif "layers" in needs and not pair.recipe.is_reference and getattr(own.layers, "unsupported", False):
            # found with quality or tasks; a reference measured for its variants never skips their tests
            pytest.skip(f"layer_error: {pair.id}: {own.layers.skipped}")
        after = self._ledger.own(pair)
        if ("vram" in needs and after.vram is None) or (after.vram is not None and after != before):
            self._ledger.record(pair, vram=live.tracker.read(live.model))
        return left

    def _throughput(self, live: LiveModel, batch: int, every_mode: bool) -> None:
        """Decode timed in the pair's mode; the reference also in every mode below it, so that a recipe that
        falls back (or pins a lower mode) is compared with the reference timed the same way."""
        from ..measure.throughput import CHAIN

        mode = decode_mode_of(live.pair.recipe, self._settings)
        throughput, timing_s = self._time(live, batch, mode)
        if every_mode and not self._settings.sharded and throughput.decode_mode in CHAIN:  # llama.cpp: its own mode
            ran = CHAIN.index(throughput.decode_mode)
            extra = tuple(self._time(live, batch, lower)[0] for lower in CHAIN[ran + 1:]
                          if device_kind(live.device) == "cuda")
        else:
            extra = ()
        if batch != self._settings.decode_batch:
            known = self._ledger.own(live.pair)
            self._ledger.record(live.pair, other_batches=known.other_batches + (throughput,) + extra)
            return
        from ..measure.roofline import memory_bandwidth_bytes_per_s, roofline_fraction

        fraction = None if self._settings.sharded else roofline_fraction(  # one GPU's bound: not a spread model's
            throughput.decode_tokens_per_s_per_sequence, int(live.model.get_memory_footprint()),
            memory_bandwidth_bytes_per_s(live.device))
        known = self._ledger.own(live.pair)
        self._ledger.record(live.pair, throughput=throughput, timing_s=timing_s, roofline_fraction=fraction,
                            other_batches=known.other_batches + extra)

    def _time(self, live: LiveModel, batch: int, mode: str, fallback: bool = True):
        from ..measure.throughput import measure_throughput
        from ..measure.timing_budget import TimingBudgetExceeded

        model = live.model
        if is_image_text_to_text(live.pair.model.path):  # the first image prompt, its image in every prefill
            from .images import decode_prompt

            prompt, model = decode_prompt(live, self._images)
        else:
            prompt = list(self._inputs.windows(live.pair.model, live.tokenizer).windows[0].input_ids[:PROMPT_TOKENS])
        settings = THROUGHPUT[device_kind(live.device)]
        self._progress(f"{live.pair.id}: timing prefill and {settings['decode_tokens']} decode steps at batch {batch} "
                       f"in {mode} mode ({settings['warmup_runs']} warm-up + {settings['repeats']} timed runs)")
        start = time.perf_counter()
        own = getattr(live.model, "measure_throughput", None)  # a runtime timed by its own counters (llama.cpp)
        try:
            throughput = own(prompt, batch_size=batch, **settings) if callable(own) else measure_throughput(
                model, prompt, batch_size=batch, mode=mode, fallback=fallback,
                compile_cache_dir=self._settings.compile_cache_dir, new_cache=kv_cache_factory(live),
                compile_settings=live.compile_settings,
                budget_s=self._settings.timing_budget_s, **settings)
        except TimingBudgetExceeded as error:
            raise TimingBudgetExceeded(f"pytest-quant: {live.pair.id}: {error}; raise --quant-timing-budget (ini "
                                       "quant_timing_budget) to time it anyway") from None
        timing_s = time.perf_counter() - start
        if throughput.compile_s is not None:
            cache = f", inductor cache {throughput.compile_cache}" if throughput.compile_cache else ""
            self._progress(f"{live.pair.id}: decode step compiled in {throughput.compile_s:.1f} s{cache}")
        if throughput.fallback_reason:
            self._progress(f"{live.pair.id}: decode timed in {throughput.decode_mode} mode: {throughput.fallback_reason}")
        return throughput, timing_s

    def _quality(self, live: LiveModel, reference: ReferenceData | None, left: ReferenceData):
        """Perplexity, KL against the reference's kept predictions, and llama.cpp's statistics; the kept
        predictions when ``live`` is the reference. An image-text-to-text model's: over the reference's answers to
        the image prompts, each conditioned on its image (the answers left in ``left`` by the reference)."""
        from ..measure.quality import evaluate
        from .images import scored

        pair = live.pair
        windows, window_inputs, left.answers = scored(live, self._inputs, self._images, reference, self._progress)
        self._progress(f"{pair.id}: evaluating {windows.tokens_scored} tokens in {len(windows.windows)} windows")
        batch = self._inputs.batch_windows
        if pair.recipe.is_reference:
            quality, kept, scores = evaluate(live.model, windows, batch, window_inputs=window_inputs,
                                             keep_reference_top_k=self._settings.reference_top_k)
        elif pair.recipe.kv_cache is not None:  # where a quantized cache acts: decoding, token by token
            from ..measure.kv_cache import check_window, parse
            from ..measure.kv_decode import evaluate_decoding

            try:
                check_window(parse(pair.recipe.kv_cache), windows.context_tokens)
            except ValueError as exc:
                pytest.fail(f"pytest-quant: {pair.id}: {exc}", pytrace=False)
            quality, kept, scores = evaluate_decoding(live.model, windows, kv_cache_factory(live),
                                                      None if reference is None else reference.kept)
        else:
            quality, kept, scores = evaluate(live.model, windows, batch, window_inputs=window_inputs,
                                             reference=None if reference is None else reference.kept)
        _check_finite(pair.id, scores.logprob_target, windows.tokens_scored)
        stats = _stats(scores, pair.recipe.is_reference)
        if pair.recipe.is_reference:  # against itself: its statistics say zero divergence and full agreement
            quality = dataclasses.replace(quality, mean_kl_nats=stats.mean_kl_nats, p99_kl_nats=stats.p99_kl_nats,
                                          top1_agreement_percent=stats.top1_agreement_percent)
        self._ledger.record(pair, quality=quality, stats=stats)  # only the statistics, never per-token arrays
        kl = f", mean KL {quality.mean_kl_nats:.5f} nats" if quality.mean_kl_nats is not None else ""
        self._progress(f"{pair.id}: perplexity {quality.perplexity:.3f}{kl} ({quality.seconds:.1f} s)")
        return kept

    def _generation(self, live: LiveModel, tokens: int, reference: ReferenceData | None):
        """Greedy generations on the session's prompts, compared with the reference's; the generations when
        ``live`` is the reference."""
        from ..measure.generation import agreement, greedy_generate
        from ..prompts import render

        pair = live.pair
        if not pair.recipe.is_reference and reference is None:
            return None  # a pre-quantized checkpoint: no reference to agree with
        if is_image_text_to_text(pair.model.path):  # the image prompts, each image in its prefill
            from .images import answer_all

            displays, generated = answer_all(live, self._images, tokens, self._progress)
        else:
            prompts = self._inputs.prompts()
            rendered = [render(p, live.tokenizer) for p in prompts]
            check_context(pair.model.path, prompts, rendered, tokens)
            displays = [p.display for p in prompts]
            self._progress(f"{pair.id}: generating {tokens} tokens greedily from {len(prompts)} prompts")
            generated = greedy_generate(live.model, live.tokenizer, rendered, tokens, new_cache=kv_cache_factory(live))
        expected = generated if pair.recipe.is_reference else reference.generations.get(tokens)
        if expected is None:
            raise RuntimeError(f"pytest-quant: the reference of {pair.model.name} generated no {tokens} tokens this "
                               "session; a generation_agreement marker added after collection cannot be compared")
        found = agreement(expected, generated, tokens, prompts=displays, tokenizer=live.tokenizer)
        self._ledger.record(pair, generations=self._ledger.own(pair).generations + (found,))
        self._progress(f"{pair.id}: {found.exact_match_percent:.1f}% of generations equal the reference's, "
                       f"{found.mean_prefix_tokens:.1f} tokens before the first divergence ({found.seconds:.1f} s)")
        return generated if pair.recipe.is_reference else None


def kv_cache_factory(live: LiveModel):
    """What makes a fresh KV cache for a recipe with a quantized one (``kv_cache``); None: transformers' own."""
    kv = getattr(live.pair.recipe, "kv_cache", None)
    if kv is None:
        return None
    from ..measure.kv_cache import cache_factory, parse

    return cache_factory(parse(kv), live.model)


def check_context(model_path, prompts, rendered, tokens: int) -> None:
    """A prompt whose tokens and the generated ones do not fit the model's context fails the test naming it
    (start-up checked each prompt alone; the number of generated tokens is a marker's)."""
    from ..models import context_length

    context = context_length(model_path)
    for prompt, ids in zip(prompts, rendered):
        if context is not None and len(ids) + tokens > context:
            pytest.fail(f"pytest-quant: prompt {prompt.source or prompt.display[:40]!r} is {len(ids)} tokens; with the "
                        f"{tokens} generated (generation_agreement(tokens={tokens})) that is more than the model's "
                        f"context of {context} tokens: shorten the prompt or generate fewer tokens", pytrace=False)


def _check_finite(pair_id: str, logprobs, tokens: int) -> None:
    """A model whose log-probabilities hold NaN or Inf fails its test with one line saying where, before any
    statistic (or baseline) is made of them."""
    values = logprobs.tolist() if hasattr(logprobs, "tolist") else list(logprobs)
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        pytest.fail(f"pytest-quant: {pair_id}: the model's log-probabilities are not finite (NaN or Inf) at {len(bad)} "
                    f"of {tokens} scored tokens, the first at token {bad[0]}: its weights or its kernels produce "
                    "non-finite logits; nothing is gated or recorded from them", pytrace=False)


def _stats(scores, is_reference: bool):
    """llama.cpp's statistics from the per-token scores; the reference's against itself (its own perplexity
    with its SE); None without a reference (a pre-quantized checkpoint)."""
    from ..measure.stats import quality_stats

    if is_reference:
        n = len(scores.logprob_target)
        return quality_stats(scores.logprob_target, scores.logprob_target, [0.0] * n, [True] * n)
    if scores.reference_logprob_target is None:
        return None
    return quality_stats(scores.logprob_target, scores.reference_logprob_target, scores.kl_nats, scores.top1_match)
