"""The plugin's one object: it wires the pairs, the ledger, the live model, the measurer and the references
together, and is what the hooks and fixtures talk to. It decides nothing itself."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..backends import Registry
from ..metrics import Measurements
from ..options import QuantOptions
from ..recipes import Recipe, missing as recipe_missing, runs_on
from .inputs import Inputs
from .ledger import Ledger
from .live import Live, LiveModel, Placement
from .measurer import MeasureSettings, Measurer
from .pairs import Pair, Pairing
from .quant_model import QuantModel
from .references import References

COMPILE_SUBDIR = "inductor"  # torch.compile's FX graph and autotuning caches, under --quant-cache-dir


class QuantSession:
    def __init__(self, options: QuantOptions, recipes: list[Recipe], registry: Registry,
                 progress: Callable[[str], None] = lambda message: None):
        self.options = options
        self.recipes = recipes
        self.registry = registry
        self.progress = progress
        self.pairing = Pairing(options.models, recipes)
        self.placement = Placement(options.device, options.sharded)
        self.ledger = Ledger(self.pairing, lambda: self.placement.label)
        self.inputs = Inputs(options.eval_text, options.eval_tokens, options.prompts, options.strict,
                             options.trust_remote_code, tasks_path=options.tasks)
        cache_dir = Path(options.cache_dir)
        self.live = Live(registry, self.placement, cache_dir, options.device_map, self.ledger, progress,
                         options.trust_remote_code)
        settings = MeasureSettings(options.decode_batch, options.sharded, options.reference_top_k,
                                   decode_mode=options.decode_mode, compile_cache_dir=cache_dir / COMPILE_SUBDIR,
                                   timing_budget_s=options.timing_budget_s)
        from .images import ImageInputs

        images = ImageInputs(getattr(options, "images", None), options.trust_remote_code)
        self.measurer = Measurer(self.ledger, self.inputs, settings, progress, images=images)
        self.references = References(self.pairing, self.ledger, self.live, self.measurer, self.inputs,
                                     self.placement, cache_dir, options.reference_top_k, progress)

    @property
    def pairs(self) -> list[Pair]:
        return self.pairing.pairs

    def unavailable_reason(self, pair: Pair) -> str | None:
        backend = self.registry[pair.recipe.backend]
        missing = recipe_missing(pair.recipe, self.registry, pair.model.path)
        if missing:
            hint = backend.install_hint
            if pair.recipe.kv_cache is not None and not backend.missing(pair.model.path):
                from ..measure.kv_cache import INSTALL_HINT as hint
            return f"recipe {pair.recipe.name}: {', '.join(missing)} not installed; install it with: {hint}"
        from ..backends.llama_cpp_spec import unavailable_reason
        from ..models.vision import is_image_text_to_text
        from .images import vision_reason

        reason = vision_reason(pair, backend, is_image_text_to_text(pair.model.path)) or \
            unavailable_reason(pair.recipe, pair.model.path)  # a GGUF file, a folder llama.cpp cannot take
        if reason:
            return reason
        if not runs_on(pair.recipe, self.registry, self.options.device):
            kinds = ", ".join(sorted(pair.recipe.devices or backend.devices))
            return f"recipe {pair.recipe.name} runs on {kinds}, not on {self.options.device}"
        return None

    def open(self, pair: Pair) -> QuantModel:
        """The pair's model, loaded after its reference is measured (so that no two models are live at once)."""
        reference = self.pairing.reference_of(pair.model, pair.recipe)
        if reference is not None:  # gguf-reference: the Hugging Face reference, shown beside it
            self.references.ensure(reference)
        live = self.live.open(pair)
        if pair.recipe.is_reference:
            try:
                self.references.measure_live(live)
            except BaseException:
                self.live.close(live)  # a failed measurement must not keep the model on the device
                raise
        return QuantModel(live, lambda needs: self.measure(live, needs), lambda: self.ledger.known(pair))

    def measure(self, live: LiveModel, needs: frozenset[str]) -> Measurements:
        pair = live.pair
        if live.model is None:
            raise RuntimeError(f"pytest-quant: {pair.id} was released; measure it while the quant_model fixture is live")
        if pair.recipe.is_reference:
            self.references.measure_live(live, needs)  # what the reference generates is kept for its variants
        else:
            reference = self.pairing.reference_of(pair.model, pair.recipe)
            self.measurer.measure(live, needs, None if reference is None else self.references.data(reference))
        return self.ledger.known(pair)

    def close(self, qm: QuantModel) -> None:
        self.live.close(qm.live)
