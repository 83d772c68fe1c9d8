"""task_accuracy failing and passing as a user sees it, on the embedded cloze task: a recipe that perturbs the model
badly (a backend of the test's own, through the hook) fails max_drop with its one-line reason just below its
measured drop, is inconclusive (naming how many items would decide) between the drop and its bound, and passes just
above the bound; a well-behaved recipe passes all of those limits and the shipped gate's 3 points."""

from __future__ import annotations

import json

import pytest

CONFTEST = """
from pytest_quant.backends import Backend, Loaded


def load_noisy(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32).eval()
    scale = float(request.recipe.get("noise", 0.0))
    with torch.no_grad():  # every layer's MLP output weights plus noise of `noise` times their deviation
        for index, layer in enumerate(model.model.layers):
            weight = layer.mlp.down_proj.weight
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(index)) * weight.std() * scale)
    return Loaded(model, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NoisyLinear")


def pytest_quant_backends(config):
    return [Backend("noisy", load_noisy, requires=("torch",), install_hint="pip install torch",
                    fields=frozenset({"noise"}))]
"""
PYPROJECT = """
[tool.pytest-quant.recipes.broken-all]
backend = "noisy"
noise = 2.0
[tool.pytest-quant.recipes.gentle]
backend = "noisy"
noise = 0.02
"""
ARGS = ("-p", "no:cacheprovider", "--quant-recipes=broken-all,gentle", "--quant-cache-dir=cache")
MARGIN_POINTS = 0.2  # how far above or below the measured drop and bound each limit sits


def _measured(pytester) -> dict[str, dict]:
    pytester.makepyfile(test_measure="""
import pytest

@pytest.mark.task_accuracy(max_drop=100)
def test_task(quant_model):
    pass
""")
    result = pytester.runpytest(*ARGS, "--quant-report=report.json")
    result.assert_outcomes(passed=2)
    return {r["recipe"]: r for r in json.loads((pytester.path / "report.json").read_text())["results"]}


def test_a_badly_perturbed_recipe_fails_max_drop_and_a_well_behaved_one_passes(pytester):
    from pytest_quant.measure.paired import PairedAccuracy, drop_upper_bound

    pytester.makeconftest(CONFTEST)
    pytester.makepyprojecttoml(PYPROJECT)
    rows = _measured(pytester)
    broken, gentle = rows["broken-all"], rows["gentle"]
    items, lost, gained = broken["task_items"], broken["task_acc_lost_items"], broken["task_acc_gained_items"]
    correct = round(broken["task_acc_percent"] * items / 100)
    bound = 100 * drop_upper_bound(PairedAccuracy(items, correct, correct + lost - gained, lost, gained), 0.95).bound
    drop = -broken["task_acc_difference_points"]
    assert drop > 3 and gentle["task_acc_lost_items"] + gentle["task_acc_gained_items"] < 10  # what the recipes are
    below, between, above = (round(x, 2) for x in (drop - MARGIN_POINTS, drop + MARGIN_POINTS, bound + MARGIN_POINTS))
    assert between < bound - MARGIN_POINTS
    (pytester.path / "test_measure.py").unlink()
    pytester.makepyfile(test_gate=f"""
import pytest

@pytest.mark.task_accuracy(max_drop={below})
def test_below_the_drop(quant_model):
    pass

@pytest.mark.task_accuracy(max_drop={between})
def test_between_the_drop_and_its_bound(quant_model):
    pass

@pytest.mark.task_accuracy(max_drop={above})
def test_above_the_bound(quant_model):
    pass

@pytest.mark.task_accuracy(max_drop=3)
def test_the_shipped_8_bit_limit(quant_model):
    pass
""")
    result = pytester.runpytest(*ARGS, "-rf")
    result.assert_outcomes(passed=5, failed=3)  # gentle passes all four; broken-all only the limit above its bound
    result.stdout.fnmatch_lines([
        "*_ test_below_the_drop[[]tiny-broken-all[]] _*",
        f"the embedded cloze task acc * a drop of +{drop:.1f}±* points ({lost} items lost, {gained} gained of {items}; "
        f"McNemar p=*), above max_drop {below:g} points (the point estimate itself; 95% upper bound {bound:.1f}, *) "
        "[[]tiny, broken-all, cpu[]]*",
        "*_ test_between_the_drop_and_its_bound[[]tiny-broken-all[]] _*",
        f"*, within max_drop {between:g} points: only its 95% upper bound {bound:.1f} (*) is above it: inconclusive at "
        f"{items} items; about * items would decide [[]tiny, broken-all, cpu[]]*",
        "*_ test_the_shipped_8_bit_limit[[]tiny-broken-all[]] _*",
        "*, above max_drop 3 points (the point estimate itself;*"])
    summary = result.stdout.str().split("short test summary")[-1]
    assert "test_above_the_bound" not in summary and "gentle" not in summary
