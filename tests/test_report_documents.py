"""report.documents and report.rows: the run header, the side-by-side generations, the terminal table."""

from __future__ import annotations


def test_the_report_shows_the_first_prompts_outputs_side_by_side_and_the_terminal_the_standard_errors() -> None:
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from pytest_quant.report.documents import RunInfo, html_document, markdown
    from pytest_quant.report.rows import Rows, table

    sample = {"prompt": "It was a truth", "reference": " universally acknowledged", "output": " universally <known>"}
    rows = Rows()
    for recipe, extra in (("reference", {}), ("bnb-nf4", {"delta_perplexity": 1.372, "delta_perplexity_se": 0.915,
                                                           "mean_kl_nats": 0.00972, "mean_kl_se_nats": 0.00034})):
        props = {"pair": f"tiny-{recipe}", "model": "tiny", "recipe": recipe, "device": "cpu", "perplexity": 148.1,
                 "perplexity_se": 20.31, "eval_tokens": 512, "eval_batch_windows": 8, "generation_compared_tokens": 8,
                 "generation_sample": dict(sample, output=sample["reference"] if recipe == "reference" else
                                           sample["output"]), **extra}
        rows.add(SimpleNamespace(user_properties=[(f"quant.{k}", v) for k, v in props.items()], failed=False,
                                 skipped=False))
    info = RunInfo.of(rows, started=datetime(2025, 1, 2, tzinfo=timezone.utc), device="cpu", eval_text="eval.txt")
    text = markdown(rows, info)
    assert "- **eval tokens**: 512 of eval.txt, 8 windows a batch" in text
    assert "Prompt: It was a truth" in text
    assert "| reference |  universally acknowledged |\n| bnb-nf4 |  universally <known> |" in text
    page = html_document(rows, info)
    assert "<td>bnb-nf4</td><td class=\"out\"> universally &lt;known&gt;</td>" in page
    terminal = "\n".join(table(rows))
    assert "148.100±20" in terminal and "+1.372±0.92" in terminal and "0.00972±0.00034" in terminal


def test_a_release_reported_by_a_later_phase_reaches_its_own_row() -> None:
    """A model is released in the next pair's setup (or the session's teardown): that report carries the
    release seconds of the pair it released, and they land in that pair's row, not the reporting pair's."""
    from types import SimpleNamespace

    from pytest_quant.report.rows import Rows

    rows = Rows()
    for recipe in ("reference", "bnb-nf4"):
        rows.add(SimpleNamespace(user_properties=[("quant.pair", f"tiny-{recipe}"), ("quant.recipe", recipe)],
                                 failed=False, skipped=False))
    rows.add(SimpleNamespace(user_properties=[("quant.released", {"tiny-reference": 0.5, "tiny-gone": 1.0})],
                             failed=False, skipped=False))
    assert rows.pairs["tiny-reference"]["release_s"] == 0.5
    assert "release_s" not in rows.pairs["tiny-bnb-nf4"] and "tiny-gone" not in rows.pairs
