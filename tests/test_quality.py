"""Rolling windows match lm-evaluation-harness; perplexity, KL and top-1 agree with naive computations."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest

from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare, rolling_windows
from pytest_quant.models import embedded_eval_text

TOKENS = 1500  # three 512-token windows: fast on a 2-core CPU, and the last window is a partial one


# The oracle: lm-evaluation-harness 0.4.13, lm_eval/utils.py get_rolling_token_windows and make_disjoint_window
# (copied verbatim apart from comments), and the model input HFLM._loglikelihood_tokens builds from each
# (context, continuation) pair: (context + continuation)[-(max_length + 1):][:-1], scoring its last
# len(continuation) positions.
def lm_eval_get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def lm_eval_make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def lm_eval_model_inputs(tokens, prefix, max_length, context_len):
    pairs = map(lm_eval_make_disjoint_window, lm_eval_get_rolling_token_windows(tokens, prefix, max_length, context_len))
    return [((context + continuation)[-(max_length + 1) :][:-1], continuation) for context, continuation in pairs]


# (text length, max_length, stride): shorter than one window, exactly one, one more, partial last window,
# stride 1, and strides that do not divide the text.
WINDOW_CASES = [(1, 4, 4), (3, 8, 8), (8, 8, 8), (9, 8, 8), (20, 8, 8), (21, 8, 3), (50, 7, 1), (100, 16, 5), (17, 1, 1)]


@pytest.mark.parametrize(("length", "max_length", "stride"), WINDOW_CASES)
def test_windows_score_every_token_once_with_its_true_history(length: int, max_length: int, stride: int) -> None:
    tokens = list(range(100, 100 + length))
    prefix = 7
    windows = rolling_windows(tokens, prefix, max_length, stride)
    scored = [t for w in windows for t in w.target_ids]
    assert scored == tokens
    sequence = [prefix] + tokens  # sequence[i + 1] is tokens[i]
    start = 0
    for window in windows:
        end = start + window.n_scored
        assert 1 <= len(window.input_ids) <= max_length
        # the input is the stretch of [prefix] + tokens that ends just before the last scored token
        assert list(window.input_ids) == sequence[end - len(window.input_ids) : end]
        start = end
    lengths = {len(w.input_ids) for w in windows}
    assert lengths == ({max_length} if length >= max_length else {length})
    assert all(w.n_scored <= stride for w in windows[1:])


@pytest.mark.parametrize(("length", "max_length", "stride"), WINDOW_CASES)
def test_windows_equal_lm_evaluation_harness(length: int, max_length: int, stride: int) -> None:
    tokens = list(range(100, 100 + length))
    ours = [(list(w.input_ids), list(w.target_ids)) for w in rolling_windows(tokens, 7, max_length, stride)]
    assert ours == lm_eval_model_inputs(tokens, 7, max_length, context_len=max_length - stride + 1)


def test_windows_of_empty_text_are_none() -> None:
    assert rolling_windows([], 0, 8, 8) == []


@pytest.mark.parametrize(("max_length", "stride"), [(8, 0), (8, 9), (0, 1)])
def test_rolling_windows_reject_bad_arguments(max_length: int, stride: int) -> None:
    with pytest.raises(ValueError, match=f"got {stride}" if max_length else "max_length must be >= 1, got 0"):
        rolling_windows([1, 2, 3], 0, max_length, stride)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_tokens": 1}, "max_tokens.*1"),
        ({"max_tokens": 0}, "max_tokens.*0"),
        ({"context_tokens": 64, "stride_tokens": 65}, "stride_tokens=65"),
        ({"stride_tokens": 0}, "stride_tokens.*0"),
        ({"context_tokens": 0}, "context_tokens.*0"),
        ({"batch_windows": 0}, "batch_windows.*0"),
    ],
)
def test_bad_spec_values_raise_naming_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EvalSpec(embedded_eval_text(), **kwargs)


@pytest.mark.parametrize("kwargs", [{"max_tokens": 2}, {"context_tokens": 64, "stride_tokens": 64}, {"stride_tokens": 1}])
def test_spec_values_at_the_limits_are_accepted(kwargs: dict) -> None:
    EvalSpec(embedded_eval_text(), **kwargs)


def test_stride_defaults_to_context() -> None:
    assert EvalSpec(embedded_eval_text(), context_tokens=256).stride_tokens == 256


def test_importing_quality_does_not_import_torch() -> None:
    code = "import sys, pytest_quant.measure.quality; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def windows(tiny):
    model, tokenizer = tiny
    return prepare(tokenizer, EvalSpec(embedded_eval_text(), max_tokens=TOKENS), max_positions=model_max_positions(model))


@pytest.fixture(scope="module")
def reference(tiny, windows):
    measurement, kept, _ = evaluate(tiny[0], windows, batch_windows=8, keep_reference_top_k="exact")
    return measurement, kept


def naive_logprobs(model, windows):
    """One window at a time, full logits, float32 log-softmax: the scored rows, in text order."""
    import torch

    rows = []
    with torch.no_grad():
        for window in windows.windows:
            logits = model(torch.tensor([window.input_ids])).logits[0]
            rows.append(torch.log_softmax(logits.float(), dim=-1)[-window.n_scored :])
    return torch.cat(rows)


def test_prepare_uses_bos_and_scores_the_requested_tokens(tiny, windows) -> None:
    _, tokenizer = tiny
    assert windows.prefix_token == tokenizer.bos_token_id == 0
    assert windows.tokens_scored == TOKENS
    assert (windows.context_tokens, windows.stride_tokens) == (512, 512)
    assert [w.n_scored for w in windows.windows] == [512, 512, TOKENS - 1024]
    assert windows.windows[0].input_ids[0] == 0


def test_context_is_capped_at_the_models_positions(tiny) -> None:
    _, tokenizer = tiny
    capped = prepare(tokenizer, EvalSpec(embedded_eval_text(), max_tokens=600, context_tokens=2048), max_positions=1024)
    assert (capped.context_tokens, capped.stride_tokens) == (1024, 1024)
    assert max(len(w.input_ids) for w in capped.windows) <= 1024


def test_perplexity_equals_exp_of_mean_nll_from_a_naive_loop(tiny, windows, reference) -> None:
    import torch

    measurement, _ = reference
    logprobs = naive_logprobs(tiny[0], windows)
    targets = torch.tensor([t for w in windows.windows for t in w.target_ids])
    nll = -logprobs.gather(1, targets[:, None]).double().mean().item()
    assert measurement.nll_nats_per_token == pytest.approx(nll, rel=1e-6)
    assert measurement.perplexity == pytest.approx(math.exp(nll), rel=1e-6)
    assert measurement.tokens_scored == TOKENS and measurement.windows == 3
    assert 20 < measurement.perplexity < 1000  # a trained model on held-out English, not a uniform guess (8192)


def test_strided_perplexity_equals_a_naive_loop_and_beats_disjoint_windows(tiny) -> None:
    import torch

    model, tokenizer = tiny
    text = embedded_eval_text()
    disjoint, _, _ = evaluate(model, prepare(tokenizer, EvalSpec(text, max_tokens=700, context_tokens=256)))
    strided = prepare(tokenizer, EvalSpec(text, max_tokens=700, context_tokens=256, stride_tokens=128))
    measurement, _, _ = evaluate(model, strided, batch_windows=4)
    logprobs = naive_logprobs(model, strided)
    targets = torch.tensor([t for w in strided.windows for t in w.target_ids])
    nll = -logprobs.gather(1, targets[:, None]).double().mean().item()
    assert measurement.nll_nats_per_token == pytest.approx(nll, rel=1e-6)
    assert (measurement.stride_tokens, measurement.windows) == (128, 5)
    assert measurement.perplexity < disjoint.perplexity  # more context per scored token


def test_batching_does_not_change_perplexity(tiny, windows, reference) -> None:
    one, _, _ = evaluate(tiny[0], windows, batch_windows=1)
    assert one.perplexity == pytest.approx(reference[0].perplexity, rel=1e-5)


def test_logprobs_come_back_only_when_asked(reference) -> None:
    import torch

    measurement, kept = reference
    logprobs = kept.topk_logprobs
    assert kept.is_exact and kept.tokens_scored == TOKENS
    assert logprobs.shape == (TOKENS, 8192) and logprobs.dtype == torch.float32 and logprobs.device.type == "cpu"
    assert torch.allclose(logprobs.exp().sum(dim=-1), torch.ones(TOKENS), atol=1e-4)
    assert measurement.mean_kl_nats is None and measurement.p99_kl_nats is None
    assert measurement.top1_agreement_percent is None


def test_kl_against_own_logprobs_is_zero_and_top1_is_100(tiny, windows, reference) -> None:
    measurement, kept, _ = evaluate(tiny[0], windows, batch_windows=8, reference=reference[1])
    assert kept is None  # not asked for
    assert measurement.mean_kl_nats == pytest.approx(0.0, abs=1e-7)
    assert measurement.p99_kl_nats == pytest.approx(0.0, abs=1e-7)
    assert measurement.top1_agreement_percent == 100.0
    assert measurement.perplexity == reference[0].perplexity


def test_kl_and_top1_of_a_perturbed_model_equal_naive_statistics(tiny, windows, reference) -> None:
    import torch

    perturbed = copy.deepcopy(tiny[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in perturbed.model.layers[0].parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    measurement, _, _ = evaluate(perturbed, windows, batch_windows=8, reference=reference[1])

    p_log = reference[1].topk_logprobs.double()
    q_log = naive_logprobs(perturbed, windows).double()
    kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1)
    agree = (p_log.argmax(dim=-1) == q_log.argmax(dim=-1)).double().mean().item() * 100
    assert measurement.mean_kl_nats > 1e-4  # the perturbation is visible
    assert measurement.mean_kl_nats == pytest.approx(kl.mean().item(), rel=1e-4)
    assert measurement.p99_kl_nats == pytest.approx(torch.quantile(kl, 0.99).item(), rel=1e-4)
    assert measurement.top1_agreement_percent == pytest.approx(agree, abs=100 / TOKENS)
    assert measurement.top1_agreement_percent < 100.0


def test_reference_of_other_windows_is_rejected(tiny, reference) -> None:
    _, tokenizer = tiny
    shorter = prepare(tokenizer, EvalSpec(embedded_eval_text(), max_tokens=100))
    with pytest.raises(ValueError, match="1500 scored tokens.*100"):
        evaluate(tiny[0], shorter, reference=reference[1])
