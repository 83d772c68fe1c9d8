"""run.pairs and run.ledger: which pairs run and which has a reference; the one writer of Measurements."""

from __future__ import annotations


from pytest_quant.models import TINY_DIR, ModelSource
from pytest_quant.recipes import BUILTIN_RECIPES
from pytest_quant.run.ledger import Ledger
from pytest_quant.run.pairs import Pair, Pairing

TINY = ModelSource("tiny", TINY_DIR)


def test_every_model_under_every_recipe_and_each_has_its_reference() -> None:
    recipes = [BUILTIN_RECIPES["reference"], BUILTIN_RECIPES["bnb-nf4"]]
    pairing = Pairing([TINY, ModelSource("other", TINY_DIR)], recipes)
    assert [p.id for p in pairing.pairs] == ["tiny-reference", "tiny-bnb-nf4", "other-reference", "other-bnb-nf4"]
    assert pairing.reference_of(TINY) == Pair(TINY, BUILTIN_RECIPES["reference"])


def test_the_ledger_records_figures_and_shows_the_references_beside() -> None:
    pairing = Pairing([TINY], [BUILTIN_RECIPES["reference"], BUILTIN_RECIPES["bnb-nf4"]])
    ledger = Ledger(pairing, lambda: "cpu")
    ref, nf4 = pairing.pairs
    assert ledger.known(nf4).reference is None and ledger.known(nf4).device == "cpu"
    ledger.record(ref, kernel="Linear", load_s=1.0)
    ledger.record(nf4, kernel="Linear4bit")
    ledger.record(nf4, load_s=2.0)  # figures add up, none is lost
    known = ledger.known(nf4)
    assert (known.kernel, known.load_s, known.reference.kernel) == ("Linear4bit", 2.0, "Linear")
    assert ledger.own(nf4).reference is None and ledger.known(ref).reference is None
    assert ledger.known(ref).is_reference and not known.is_reference


def test_each_release_is_reported_once() -> None:
    pairing = Pairing([TINY], [BUILTIN_RECIPES["reference"], BUILTIN_RECIPES["bnb-nf4"]])
    ledger = Ledger(pairing, lambda: "cpu")
    ref, nf4 = pairing.pairs
    ledger.record(ref, load_s=1.0)
    assert ledger.unreported_releases() == {}
    ledger.record(ref, release_s=0.25)
    assert ledger.unreported_releases() == {"tiny-reference": 0.25}
    ledger.record(nf4, release_s=0.5)
    assert ledger.unreported_releases() == {"tiny-bnb-nf4": 0.5}  # the reference's was reported already
    assert ledger.unreported_releases() == {}
