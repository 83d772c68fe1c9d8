"""gates.checks and the dispatch of gates.markers.check: memory and speed limits just above and just below the
figure, ratios against the reference, the reference never gated against itself."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_quant import gates
from pytest_quant.measure.vram import VramMeasurement


def verdict(marker: str, m, *args, **kwargs) -> list[str]:
    return [v.reason for v in gates.check(gates.parse(gates.MARKERS[marker], args, kwargs), m)]


def test_vram_budget_just_above_and_just_below(pair) -> None:
    resident = pair.vram.resident_bytes
    assert verdict("vram_budget", pair, resident) == []
    (reason,) = verdict("vram_budget", pair, resident - 1)
    assert reason.startswith("VRAM budget 11.44 MiB exceeded: footprint 11.44 MiB (+0.0%) [tiny, bnb-nf4, cpu]")


def test_vram_ratio_just_above_and_just_below(pair) -> None:
    ratio = pair.vram.resident_bytes / pair.reference.vram.resident_bytes
    assert verdict("vram_budget", pair, ratio=ratio * 1.001) == []
    (reason,) = verdict("vram_budget", pair, ratio=ratio * 0.999)
    assert reason.startswith("VRAM ratio 0.300 of reference exceeds 0.300: footprint 11.44 MiB vs reference 38.15 MiB")


def test_vram_phase_generate_reads_the_decode_peak_on_gpu(pair) -> None:
    gpu = dataclasses.replace(pair, vram=VramMeasurement("cuda:0", 1000, 900, load_peak_bytes=1100,
                                                         generate_peak_bytes=5000))
    assert verdict("vram_budget", gpu, 4999) == []
    (reason,) = verdict("vram_budget", gpu, 4999, phase="generate")
    assert "peak while generating 4.88 KiB" in reason
    assert "resident 1000 B" in verdict("vram_budget", gpu, 999)[0]


def test_tokens_per_second_floor_and_ratio(pair) -> None:
    assert verdict("tokens_per_second", pair, min=59.9) == []
    (reason,) = verdict("tokens_per_second", pair, min=60.1)
    assert reason == "decode 60.0 tok/s below floor 60.1 tok/s (-0.2%, eager) [tiny, bnb-nf4, cpu]"
    assert verdict("tokens_per_second", pair, min_ratio=0.59) == []
    (reason,) = verdict("tokens_per_second", pair, min_ratio=0.61)
    assert reason == "decode 60.0 tok/s is 0.600 x reference 100.0 tok/s, below min_ratio 0.61 [tiny, bnb-nf4, cpu]"


def test_the_reference_is_not_gated_against_itself(pair) -> None:
    ref = pair.reference
    assert verdict("vram_budget", ref, ratio=0.01) == []
    assert verdict("perplexity_delta", ref, max=0) == []
    assert verdict("kl_divergence", ref, max_mean=0, min_top1=100) == []
    assert verdict("vram_budget", ref, 1) != []  # an absolute limit still applies


def test_a_relative_limit_of_a_prequantized_checkpoint_says_it_has_no_reference(pair) -> None:
    alone = dataclasses.replace(pair, reference=None)
    (reason,) = verdict("perplexity_delta", alone, max_rel=0.05)
    assert "tiny is a pre-quantized checkpoint without one: gate it with absolute limits or vs='baseline'" in reason
    assert verdict("vram_budget", alone, "1 GiB") == []


@pytest.mark.parametrize("name", sorted(gates.MARKERS))
def test_each_markers_help_names_its_keywords(name: str) -> None:
    spec = gates.MARKERS[name]
    assert spec.help.startswith(f"{name}(")
    for keyword in spec.keywords + spec.options:
        assert f"{keyword}=..." in spec.help
    assert ("vs=\"baseline\"" in spec.help) == spec.baseline


def test_min_ratio_compares_with_the_reference_timed_in_the_same_mode(pair) -> None:
    compiled = dataclasses.replace(pair.throughput, decode_mode="compiled", decode_tokens_per_s=120.0)
    graph_ref = dataclasses.replace(pair.reference.throughput, decode_mode="cuda-graph", decode_tokens_per_s=80.0)
    ref = dataclasses.replace(pair.reference, throughput=dataclasses.replace(pair.reference.throughput,
                                                                             decode_mode="compiled", decode_tokens_per_s=150.0),
                              other_batches=(graph_ref,))
    graph = dataclasses.replace(pair, throughput=dataclasses.replace(pair.throughput, decode_mode="cuda-graph"),
                                reference=ref)
    # the recipe fell back to cuda-graph: compared with the reference's cuda-graph figure (60 / 80), not 60 / 150
    assert verdict("tokens_per_second", graph, min_ratio=0.74) == []
    (reason,) = verdict("tokens_per_second", graph, min_ratio=0.76)
    assert "is 0.750 x reference 80.0 tok/s" in reason
    assert verdict("tokens_per_second", dataclasses.replace(pair, throughput=compiled, reference=ref), min_ratio=0.8) == []
    eager = dataclasses.replace(pair, throughput=dataclasses.replace(pair.throughput, decode_mode="eager"), reference=ref)
    (reason,) = verdict("tokens_per_second", eager, min_ratio=0.5)
    assert "decode timed in eager mode, and the reference was not: min_ratio compares figures of one mode" in reason
