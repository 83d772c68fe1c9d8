"""Modules a recipe keeps unquantized by name (bitsandbytes' ``llm_int8_skip_modules``, as the seed keeps MiniCPM-V's
resampler and head): every name must have kept some module, checked on the loaded model.

transformers matches a name from the start of a module's full name up to a dot, or as its end: "lm_head" and
"out_proj" match, "multi_modal_projector" matches nothing in ``model.multi_modal_projector.linear_1`` and would
silently quantize the projector. A name that kept nothing stops the load, naming the modules it may have meant.
"""

from __future__ import annotations

import re

BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def matches(pattern: str, module_name: str) -> bool:
    """transformers' rule (``quantizers_utils.should_convert_module``): from the start to a module boundary, as a
    regular expression with that boundary, or as the name's end."""
    try:
        found = re.match(rf"(?:{pattern}){BOUNDARY}", module_name) is not None
    except re.error:
        found = False
    return found or module_name.endswith(pattern)


def unmatched(patterns, module_names) -> list[str]:
    """The patterns that match none of ``module_names``."""
    names = list(module_names)
    return [p for p in patterns if not any(matches(p, n) for n in names)]


def suggestions(pattern: str, module_names, limit: int = 3) -> list[str]:
    """Full names of the modules whose dotted name holds ``pattern`` as a part, shortest first: what to write."""
    holding = {n.split(pattern)[0] + pattern for n in module_names if f".{pattern}." in f".{n}."}
    return sorted(holding, key=len)[:limit]


def skip_problem(model, patterns, field: str, recipe: str) -> str | None:
    """Why a name of ``patterns`` kept no linear layer of the loaded model unquantized (transformers
    asks the rule of each linear layer's name only: "multi_modal_projector" ends the projector's own name, not its
    layers')."""
    import torch

    if not patterns:
        return None
    names = [name for name, m in model.named_modules() if name and isinstance(m, torch.nn.Linear)]
    missing = unmatched(list(patterns), names)
    if not missing:
        return None
    hints = {p: suggestions(p, names) for p in missing}
    said = "; ".join(f"{p!r} matches no module" + (f" (write {', '.join(map(repr, hints[p]))})" if hints[p] else "")
                     for p in missing)
    return (f"recipe {recipe}: {field}: {said} among the linear layers of {type(model).__name__}; transformers "
            "matches a name from the start of a module's full name, or as its end, so those layers would be quantized")
