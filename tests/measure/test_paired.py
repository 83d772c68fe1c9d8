"""measure.paired against independent computations: enumeration of every outcome, numpy, fractions."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from pytest_quant.measure.paired import (EXACT_BELOW_DISCORDANT, binomial_cdf, clopper_pearson_upper,
                                         drop_upper_bound, items_to_decide, mcnemar_exact_p, paired_accuracy)
from pytest_quant.measure.stats import mean_and_se, z_score


def _enumerated_cdf(k: int, n: int, p: Fraction) -> Fraction:
    """P(X <= k) by enumerating all 2^n outcomes, in exact rational arithmetic."""
    total = Fraction(0)
    for outcome in itertools.product((0, 1), repeat=n):
        if sum(outcome) <= k:
            total += math.prod(p if x else 1 - p for x in outcome)
    return total


@pytest.mark.parametrize("n", [1, 4, 9])
@pytest.mark.parametrize("p", [Fraction(1, 2), Fraction(1, 7), Fraction(5, 6)])
def test_binomial_cdf_equals_enumeration(n, p):
    for k in range(-1, n + 1):
        assert binomial_cdf(k, n, float(p)) == pytest.approx(float(_enumerated_cdf(k, n, p)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("losses, gains", [(0, 0), (1, 0), (3, 9), (6, 6), (10, 2), (0, 11)])
def test_mcnemar_p_is_twice_the_smaller_tail_of_every_split(losses, gains):
    m = losses + gains
    # two-sided exact: every split of m discordant items at least as extreme as the smaller count
    extreme = sum(math.comb(m, i) for i in range(m + 1) if min(i, m - i) <= min(losses, gains))
    expected = 1.0 if m == 0 else min(1.0, extreme / 2 ** m)
    assert mcnemar_exact_p(losses, gains) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k, n", [(0, 5), (2, 10), (7, 20), (19, 20), (40, 100)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_upper_bound_leaves_exactly_alpha_below(k, n, confidence):
    bound = clopper_pearson_upper(k, n, confidence)
    tail = sum(math.comb(n, i) * bound ** i * (1 - bound) ** (n - i) for i in range(k + 1))
    assert tail == pytest.approx(1 - confidence, rel=1e-9)
    if k == 0:  # closed form: 1 - alpha^(1/n)
        assert bound == pytest.approx(1 - (1 - confidence) ** (1 / n), rel=1e-12)


def test_paired_counts_and_standard_errors_match_the_per_item_differences():
    rng = np.random.default_rng(3)
    reference = rng.uniform(size=300) < 0.55
    model = np.where(rng.uniform(size=300) < 0.1, ~reference, reference)
    paired = paired_accuracy(reference.tolist(), model.tolist())
    assert paired.losses == int(np.sum(reference & ~model)) and paired.gains == int(np.sum(model & ~reference))
    mean, se = mean_and_se(model.astype(float) - reference.astype(float))
    assert paired.difference == pytest.approx(mean, abs=1e-15)
    assert paired.difference_se == pytest.approx(se, rel=1e-12)
    assert paired.accuracy_se == pytest.approx(mean_and_se(model.astype(float))[1], rel=1e-12)
    assert paired.reference_accuracy == pytest.approx(reference.mean())


def test_drop_bound_is_exact_below_the_threshold_and_normal_above():
    few = paired_accuracy([1] * 8 + [0] * 2 + [1] * 190, [0] * 8 + [1] * 2 + [1] * 190)  # 8 lost, 2 gained
    bound = drop_upper_bound(few, 0.95)
    assert bound.exact and bound.drop == pytest.approx(6 / 200)
    # the largest drop delta (2 pi - 1) over the box of the two exact bounds at 97.5% each, by a grid search
    pi_high = clopper_pearson_upper(8, 10, 0.975)
    delta_low, delta_high = 1 - clopper_pearson_upper(190, 200, 0.975), clopper_pearson_upper(10, 200, 0.975)
    grid = max(d * (2 * p - 1) for d in np.linspace(delta_low, delta_high, 201) for p in np.linspace(0, pi_high, 201))
    assert bound.bound == pytest.approx(grid, rel=1e-9)
    many_lost, many_gained = 40, EXACT_BELOW_DISCORDANT - 40 + 5
    reference = [1] * many_lost + [0] * many_gained + [1] * 500
    model = [0] * many_lost + [1] * many_gained + [1] * 500
    normal = drop_upper_bound(paired_accuracy(reference, model), 0.95)
    paired = paired_accuracy(reference, model)
    assert not normal.exact
    assert normal.bound == pytest.approx(normal.drop + z_score(0.95) * paired.difference_se)


def test_the_exact_drop_bound_covers_the_true_drop_at_least_as_often_as_promised():
    rng = np.random.default_rng(11)
    n, p_loss, p_gain, confidence, covered, runs = 200, 0.04, 0.01, 0.9, 0, 300
    for _ in range(runs):
        u = rng.uniform(size=n)
        reference = [True] * n
        model = [not (x < p_loss) for x in u]
        reference = [r if not (p_loss <= x < p_loss + p_gain) else False for r, x in zip(reference, u)]
        model = [m if not (p_loss <= x < p_loss + p_gain) else True for m, x in zip(model, u)]
        covered += drop_upper_bound(paired_accuracy(reference, model), confidence).bound >= p_loss - p_gain
    assert covered / runs >= confidence  # exact (and conservative): measured 0.995 over 1,000 runs


def test_items_to_decide_scales_the_standard_error_as_one_over_root_items():
    needed = items_to_decide(0.01, 0.01, 100, 0.02, 0.95)
    assert needed == math.ceil(100 * (z_score(0.95) * 0.01 / 0.01) ** 2)
    assert items_to_decide(0.03, 0.01, 100, 0.02, 0.95) is None  # the point itself breaks the limit
    assert items_to_decide(0.0, 0.0, 100, 0.02, 0.95) is None


def test_unequal_or_empty_inputs_are_refused():
    with pytest.raises(ValueError):
        paired_accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        paired_accuracy([], [])
