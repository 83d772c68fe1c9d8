"""What is known of a model x recipe: every figure measured so far, and its reference's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Measurements:
    """Everything measured of one model x recipe so far, and of its model's unquantized reference.

    ``vram``, ``throughput`` and ``quality`` are the frozen results of ``pytest_quant.measure``
    (None until measured); ``reference`` is the reference's own Measurements (None for the reference
    itself and for a pre-quantized checkpoint, which has none).
    """

    model: str
    recipe: str
    device: str
    hardware: str = ""
    kernel: str = ""
    dtype: str = ""
    cache: str = ""  # "hit", "miss", "rebuilt" or "" where nothing is cached
    import_s: float | None = None  # importing the backend's libraries, when this pair was the first to need them
    load_s: float | None = None
    quantize_s: float | None = None
    timing_s: float | None = None  # wall time of the throughput measurement, warm-up included
    release_s: float | None = None  # dropping the model and checking that its memory came back
    vram: Any = None  # measure.vram.VramMeasurement
    throughput: Any = None  # measure.throughput.ThroughputMeasurement
    quality: Any = None  # measure.quality.QualityMeasurement
    roofline_fraction: float | None = None  # decode tokens/s over the memory-bandwidth bound (GPU)
    other_batches: tuple = ()  # ThroughputMeasurements at batch sizes other than the session's default
    # measure.stats.QualityStats from the evaluation's per-token scores, against the reference (the reference's
    # own: against itself); None without a reference (a pre-quantized checkpoint)
    stats: Any = None
    generations: tuple = ()  # measure.generation.GenerationAgreement, one per number of tokens compared
    tasks: Any = None  # measure.tasks.TaskMeasurement: its answers to the task items against the reference's
    layers: Any = None  # measure.layers.LayerErrors: each decoder layer's own error against the reference's
    reference: "Measurements | None" = None
    is_reference: bool = False  # the unquantized model itself: limits relative to it do not apply

    def throughput_at(self, batch: int | None, mode: str | None = None):
        """The throughput measured at ``batch`` sequences (None: the session's default batch) in decode ``mode``
        (None: the mode the pair was timed in; the reference is also timed in every mode below its own)."""
        first = self.throughput
        if first is not None and (batch is None or first.batch_size == batch) and mode in (None, first.decode_mode):
            return first
        if batch is None and mode is None:
            return None
        batch = first.batch_size if batch is None and first is not None else batch
        return next((t for t in self.other_batches if (batch is None or t.batch_size == batch)
                     and (mode is None or t.decode_mode == mode)), None)

    def generation_at(self, tokens: int | None):
        """The generation agreement over ``tokens`` generated tokens (None: the first measured)."""
        return next((g for g in self.generations if tokens is None or g.tokens_compared == tokens), None)

    @property
    def generation(self):
        return self.generation_at(None)

    def has(self, need: str) -> bool:
        """Whether a need ("quality", "vram", "throughput", "throughput:N", "generation:N", "tasks", "layers") is
        measured."""
        name, _, number = need.partition(":")
        if name == "throughput":
            return self.throughput_at(int(number) if number else None) is not None
        if name == "generation":
            return self.generation_at(int(number) if number else None) is not None
        return getattr(self, name) is not None

    @property
    def decode_mode(self) -> str | None:
        return None if self.throughput is None else self.throughput.decode_mode

    @property
    def decode_fallback(self) -> str | None:
        """Why decode was not timed in the mode asked for (None: it was)."""
        return None if self.throughput is None else getattr(self.throughput, "fallback_reason", None)

    @property
    def pair(self) -> str:
        return f"{self.model}-{self.recipe}"

    @property
    def where(self) -> str:
        return f"[{self.model}, {self.recipe}, {self.device}]"
