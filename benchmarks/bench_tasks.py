"""Task accuracy and layer errors of every shipped recipe on the embedded model, and their truth.

1. ``figures``: the plugin (a pytest session on a generated test file) answers the embedded cloze task with the
   reference and every recipe given, plus ``broken-middle``, a backend of the benchmark's own (through the hook)
   that drowns layer 3's MLP output weights in noise as large as themselves, and ``broken-all``, every layer's in
   noise twice as large (a recipe badly broken everywhere); the JSON report gives the reference's
   accuracy ± SE and each recipe's paired difference ± SE, items lost and gained, McNemar's p, the drop's 95%
   upper bound and each layer's own SQNR. Printed as a Markdown table (RESULTS.md).
2. ``truth``: for ``broken-middle``, the same figures recomputed independently, in plain torch and Python: every
   choice scored as one full sequence (no batching, no shared context), the paired counts and SEs with
   ``statistics``, McNemar's p from ``math.comb``, each layer's own SQNR by calling the layer by hand on the
   reference's input to it (``output_hidden_states``); they must agree with the plugin's to 4 significant digits.

    .venv/bin/python benchmarks/bench_tasks.py figures --recipes bnb-nf4,bnb-int8   # plus broken-middle
    .venv/bin/python benchmarks/bench_tasks.py figures --device cuda --recipes ...  # on a GPU (--quant-gpu)
3. ``bounds``: the decision's statistics (``measure.paired``: the drop's one-sided bound, exact below 50 discordant
   items and from the paired SE above, McNemar's exact p, the Clopper-Pearson bound, the Wilson bound of
   ``min_accuracy``) against scipy.stats (``beta.ppf``, ``binomtest``, ``norm.ppf``) and numpy's standard deviation
   of the per-item differences, over a grid of paired outcomes; they must agree to 4 significant digits.

    .venv/bin/python benchmarks/bench_tasks.py truth
    .venv/bin/python benchmarks/bench_tasks.py bounds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BROKEN_LAYER = 3
CONFTEST = f"""
from pytest_quant.backends import Backend, Loaded


def perturb(model):
    import torch

    with torch.no_grad():
        weight = model.model.layers[{BROKEN_LAYER}].mlp.down_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std())
    return model


def perturb_all(model, scale=2.0):
    import torch

    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            weight = layer.mlp.down_proj.weight
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(index)) * weight.std() * scale)
    return model


def load_perturbed(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32).eval()
    broken = perturb_all(model) if request.recipe.get("every_layer") else perturb(model)
    return Loaded(broken, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NoisyLinear")


def pytest_quant_backends(config):
    return [Backend("perturbed", load_perturbed, requires=("torch",), install_hint="pip install torch",
                    fields=frozenset({"every_layer"}))]
"""
TEST = """
import pytest

@pytest.mark.task_accuracy(max_drop=100)
@pytest.mark.layer_error(min_sqnr_db=1)
def test_task(quant_model):
    pass
"""
PYPROJECT = ('[tool.pytest-quant.recipes.broken-middle]\nbackend = "perturbed"\n'
             '[tool.pytest-quant.recipes.broken-all]\nbackend = "perturbed"\nevery_layer = true\n')


def run_plugin(recipes: str, folder: Path, cache: Path, device: str, eval_tokens: int = 8192,
               broken_all: bool = False) -> list[dict]:
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_tasks.py").write_text(TEST)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    gpu = ["--quant-gpu"] if device != "cpu" else []
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_tasks.py", *gpu,
               f"--quant-recipes={recipes},broken-middle{',broken-all' if broken_all else ''}", f"--quant-cache-dir={cache}", "--quant-report=report.json",
               f"--quant-eval-tokens={eval_tokens}"]  # the layer sample and the task do not depend on it
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    print(f"plugin run: {time.perf_counter() - start:.0f} s, exit {done.returncode}", file=sys.stderr)
    if not (folder / "report.json").exists():
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    return json.loads((folder / "report.json").read_text())["results"]


def figures(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_plugin(args.recipes, Path(tmp), Path(args.cache_dir).resolve(), args.device, args.eval_tokens,
                          broken_all=True)
    reference = next((r for r in rows if r.get("reference_task_acc_percent") is not None), None)
    if reference:
        print(f"reference accuracy (acc): {reference['reference_task_acc_percent']:.2f} ± "
              f"{reference['reference_task_acc_se_percent']:.2f}% over {reference['task_items']} items\n")
    print("| recipe | acc % | Δ acc (points, paired SE) | lost / gained | McNemar p | Δ acc_norm (points) | "
          "worst layer (own SQNR dB) | lm_head dB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        if r.get("recipe") == "reference" or "task_acc_percent" not in r:
            continue
        layers = r.get("layer_sqnr_db") or {}
        finite = {name: own for name, (own, _) in layers.items() if own is not None}
        worst = min(finite, key=finite.get) if finite else "-"
        head = layers.get("lm_head", [None])[0]
        print(f"| {r['recipe']} | {r['task_acc_percent']:.2f} | {r['task_acc_difference_points']:+.2f} ± "
              f"{r['task_acc_difference_se_points']:.2f} | {r['task_acc_lost_items']} / {r['task_acc_gained_items']} | "
              f"{r['task_acc_mcnemar_p']:.3g} | {r['task_acc_norm_difference_points']:+.2f} | "
              f"{worst} ({finite.get(worst, math.inf):.1f}) | {'unchanged' if head is None else f'{head:.1f}'} |")


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 5e-5 * max(abs(a), abs(b))


def truth(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO))
    from pytest_quant.measure.tasks import continuation_of, encode_pair
    from pytest_quant.models import TINY_DIR
    from pytest_quant.tasks import cloze_task

    with tempfile.TemporaryDirectory() as tmp:
        row = next(r for r in run_plugin("reference", Path(tmp), Path(tmp) / "cache", "cpu")
                   if r["recipe"] == "broken-middle")
    namespace: dict = {}
    exec(CONFTEST.split("def load_perturbed")[0], namespace)  # the benchmark's own perturbation, as the backend's
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    reference = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    broken = namespace["perturb"](AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval())
    items = cloze_task()

    def answers(model) -> list[bool]:
        right = []
        with torch.inference_mode():
            for item in items:
                scores = []
                for choice in item.choices:
                    context, cont = encode_pair(tokenizer, item.question, continuation_of(choice))
                    ids = [tokenizer.bos_token_id] + context + cont
                    logprobs = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
                    scores.append(sum(float(logprobs[len(ids) - len(cont) - 1 + j, t]) for j, t in enumerate(cont)))
                right.append(scores.index(max(scores)) == item.answer)
        return right

    ref_ok, ok = answers(reference), answers(broken)
    n = len(items)
    diffs = [int(q) - int(r) for r, q in zip(ref_ok, ok)]
    losses, gains = diffs.count(-1), diffs.count(1)
    m = losses + gains
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(min(losses, gains) + 1)) / 2 ** m) if m else 1.0
    mine = {"task_acc_percent": 100 * sum(ok) / n, "reference_task_acc_percent": 100 * sum(ref_ok) / n,
            "task_acc_difference_points": 100 * statistics.fmean(diffs),
            "task_acc_difference_se_points": 100 * statistics.pstdev(diffs) / math.sqrt(n - 1),
            "task_acc_se_percent": 100 * statistics.pstdev([int(x) for x in ok]) / math.sqrt(n - 1),
            "task_acc_lost_items": losses, "task_acc_gained_items": gains, "task_acc_mcnemar_p": p}
    # per-layer own SQNR: each layer of the broken model called by hand on the reference's input to it
    window = [tokenizer.bos_token_id] + list(tokenizer(Path(TINY_DIR / "eval.txt").read_text(encoding="utf-8"),
                                                       add_special_tokens=False)["input_ids"])[:127]
    with torch.inference_mode():
        hidden = reference(input_ids=torch.tensor([window]), output_hidden_states=True).hidden_states
        positions = torch.arange(len(window))[None]
        from transformers.masking_utils import create_causal_mask

        for index, layer in enumerate(broken.model.layers):
            given = hidden[index]
            rotary = broken.model.rotary_emb(given, positions)
            mask = create_causal_mask(config=broken.config, inputs_embeds=given, attention_mask=None, cache=None,
                                      position_ids=positions)
            out = layer(given, attention_mask=mask, position_embeddings=rotary, position_ids=positions)[0].double()
            want = (hidden[index + 1] if index + 1 < len(broken.model.layers) else
                    reference.model.layers[index](given, attention_mask=mask, position_embeddings=rotary,
                                                  position_ids=positions))[0].double()
            noise = float(((out - want) ** 2).sum())
            mine[f"layers.{index}"] = math.inf if noise == 0 else 10 * math.log10(float((want ** 2).sum()) / noise)
    theirs = dict(row)
    theirs.update({name: (math.inf if own is None else own) for name, (own, _) in row["layer_sqnr_db"].items()})
    bad = 0
    for key, value in mine.items():
        agree = _close(float(value), float(theirs[key])) if key.startswith("layers.") and math.isfinite(value) else \
            math.isclose(float(value), float(theirs[key]), rel_tol=5e-4, abs_tol=5e-4)  # the report's 3 decimals
        bad += not agree
        print(f"{key:34} independent {value:>14.6g}   plugin {float(theirs[key]):>14.6g}   {'ok' if agree else 'DIFFERS'}")
    sys.exit(1 if bad else 0)


# (items, reference right, lost, gained): the embedded cloze task's broken-all (45 lost, 17 gained of 400), few
# flips, none, many at 1,000 items, and the exact/normal boundary (49 and 50 discordant)
GRID = ((400, 254, 45, 17), (400, 254, 2, 2), (400, 254, 3, 0), (400, 254, 0, 0), (1000, 700, 30, 19),
        (200, 120, 8, 2), (100, 60, 1, 1), (400, 254, 30, 19), (400, 254, 30, 20))
CONFIDENCES = (0.9, 0.95, 0.99)


def bounds(args) -> None:
    import numpy as np
    from scipy import stats as sp

    sys.path.insert(0, str(REPO))
    from pytest_quant.measure.paired import (EXACT_BELOW_DISCORDANT, PairedAccuracy, clopper_pearson_upper,
                                             drop_upper_bound, mcnemar_exact_p)
    from pytest_quant.measure.stats import wilson_lower_bound

    def cp_upper(k: int, n: int, c: float) -> float:
        return 1.0 if k == n else float(sp.beta.ppf(c, k + 1, n - k))

    bad = checked = 0
    for n, ref_right, lost, gained in GRID:
        correct = ref_right - lost + gained
        paired = PairedAccuracy(n, correct, ref_right, lost, gained)
        diffs = np.array([-1] * lost + [1] * gained + [0] * (n - lost - gained), dtype=np.float64)
        se = float(diffs.std(ddof=0) / math.sqrt(n - 1))
        m = lost + gained
        pairs = [("paired SE", paired.difference_se, se),
                 ("McNemar p", mcnemar_exact_p(lost, gained),
                  float(sp.binomtest(min(lost, gained), m, 0.5).pvalue) if m else 1.0)]
        for c in CONFIDENCES:
            drop = -float(diffs.mean())
            if m >= EXACT_BELOW_DISCORDANT:
                theirs = drop + float(sp.norm.ppf(c)) * se
            else:
                each = 1 - (1 - c) / 2
                pi = cp_upper(lost, m, each) if m else 1.0
                share = cp_upper(m, n, each) if pi > 0.5 else 1 - cp_upper(n - m, n, each)
                theirs = share * (2 * pi - 1)
            wilson = sp.binomtest(correct, n).proportion_ci(confidence_level=2 * c - 1, method="wilson").low
            pairs += [(f"drop bound @{c:g}", drop_upper_bound(paired, c).bound, theirs),
                      (f"Clopper-Pearson(lost of m) @{c:g}", clopper_pearson_upper(lost, m, c) if m else 1.0,
                       cp_upper(lost, m, c) if m else 1.0),
                      (f"Wilson lower @{c:g}", wilson_lower_bound(correct, n, c), float(wilson))]
        for name, mine, scipy_value in pairs:
            agree = _close(mine, scipy_value) or abs(mine - scipy_value) < 1e-12
            bad += not agree
            checked += 1
            print(f"n={n:5} lost={lost:3} gained={gained:3} {name:34} plugin {mine:>14.8g}   scipy {scipy_value:>14.8g}"
                  f"   {'ok' if agree else 'DIFFERS'}")
    print(f"{checked - bad} of {checked} agree to 4 significant digits")
    sys.exit(1 if bad else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("figures", "truth", "bounds"))
    parser.add_argument("--recipes", default="bnb-nf4,bnb-nf4-dq,bnb-fp4,bnb-int8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--cache-dir", default=str(REPO / ".quant-cache" / "bench-tasks"))
    args = parser.parse_args()
    {"figures": figures, "truth": truth, "bounds": bounds}[args.mode](args)


if __name__ == "__main__":
    main()
