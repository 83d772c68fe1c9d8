"""The one live model: where models load, opening one under a recipe (with its VRAM tracker) and releasing it
with a check that its GPU memory came back."""

from __future__ import annotations

import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from ..backends import LoadRequest, Registry
from ..hardware import free_device_memory, hardware_name, placement_devices, placement_label
from ..measure import compile_cache
from ..models import embedded_calibration_text
from ..units import format_bytes
from .ledger import Ledger
from .pairs import Pair

RELEASE_SLACK_BYTES = 1 << 20


class Placement:
    """Where models load: the session's device, or every visible GPU under --quant-device auto (asked of CUDA
    only when first needed)."""

    def __init__(self, device: str, sharded: bool):
        self.device = device
        self.sharded = sharded
        self._devices: tuple[str, ...] | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        if self._devices is None:
            self._devices = placement_devices(self.device, self.sharded)
        return self._devices

    @property
    def label(self) -> str:
        """The placement as reports show it, in the host's numbering ('cuda:3' in an xdist worker given GPU 3)."""
        return placement_label(self.devices)


@dataclass
class LiveModel:
    """A loaded model under one recipe: what the measurer reads and what ``Live.close`` releases."""

    pair: Pair
    model: Any
    tokenizer: Any
    tracker: Any  # measure.vram.VramTracker, started just before the backend put anything on the device
    allocated_before_bytes: int  # what the devices held before the load: the release check's target
    device: str
    compile_settings: dict[str, Any] = field(default_factory=dict)  # inductor settings its library made at load


def holders(obj) -> list[str]:
    """What still references ``obj``: module globals by dotted name, any other holder by its type.

    Module globals are found by reading every module's namespace, not through ``gc.get_referrers``, which does
    not see objects a ``gc.freeze()`` moved to the permanent generation (module dicts, in a process that froze
    what it had imported)."""
    import gc
    import sys
    import types

    found, namespaces = [], set()
    # sys.modules may hold objects that are not modules (Cython's parallel helper, lazy loaders): name what
    # has a name, never fail the release check over it
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
        if not isinstance(namespace, dict):
            continue
        namespaces.add(id(namespace))
        for name, value in list(namespace.items()):
            if value is obj:
                found.append(f"{module_name}.{name}")
    for ref in gc.get_referrers(obj):  # plain loops: a comprehension would hold obj in a cell of its own
        if id(ref) not in namespaces and not isinstance(ref, types.FrameType):
            found.append(f"a {type(ref).__name__}")
    return found


class Live:
    """Opens one model at a time and records what loading it cost in the ledger."""

    def __init__(self, registry: Registry, placement: Placement, cache_dir: Path, device_map, ledger: Ledger,
                 progress: Callable[[str], None], trust_remote_code: bool = False):
        self._registry = registry
        self._trust_remote_code = trust_remote_code
        self._placement = placement
        self._cache_dir = cache_dir
        self._device_map = device_map
        self._ledger = ledger
        self._progress = progress
        self.current: LiveModel | None = None

    def open(self, pair: Pair) -> LiveModel:
        from ..measure.vram import VramTracker

        trackers: list[VramTracker] = []
        device, devices = self._placement.device, self._placement.devices
        self._progress(f"loading {pair.model.name} under {pair.recipe.name} on {self._placement.label}")
        backend = self._registry[pair.recipe.backend]
        import_s = timed_import(backend)
        # a CUDA decode compiles: a library's process-wide inductor settings must not reach other recipes' compiles
        inductor = compile_cache.inductor_settings() if any(d.startswith("cuda") for d in devices) else None
        start = time.perf_counter()
        try:
            loaded = backend.load_model(LoadRequest(
                model_path=pair.model.path, recipe=pair.recipe, device=device, cache_dir=self._cache_dir,
                calibration_text=embedded_calibration_text(), device_map=self._device_map,
                trust_remote_code=self._trust_remote_code,
                before_load=lambda: trackers.append(VramTracker(device, devices))))
        finally:  # a load that fails half way (torchao-fp8 on float16 weights) has changed them too
            compile_settings = compile_cache.changes_undone(inductor) if inductor is not None else {}
        load_s = time.perf_counter() - start
        if compile_settings:
            self._progress(f"{pair.id}: {pair.recipe.backend} set inductor's {', '.join(sorted(compile_settings))} "
                           "for the whole process while loading: undone, applied to this recipe's own compile only")
        problem = loaded_problem(loaded)
        if problem:
            raise RuntimeError(f"pytest-quant: backend {pair.recipe.backend!r} loaded {pair.id} {problem}")
        tracker = trackers[-1]
        tracker.loaded()
        hardware = ", ".join(dict.fromkeys(hardware_name(d) for d in devices))
        if pair.recipe.kv_cache is not None:  # the report names the cache format beside the weights' kernel
            from ..measure.kv_cache import parse

            loaded.kernel = f"{loaded.kernel}; {parse(pair.recipe.kv_cache).label}"
        self._ledger.record(pair, hardware=hardware, kernel=loaded.kernel, dtype=loaded.dtype, cache=loaded.cache,
                            import_s=import_s, load_s=load_s, quantize_s=loaded.quantize_seconds or None)
        quantized = f", quantized in {loaded.quantize_seconds:.1f} s" if loaded.quantize_seconds else ""
        cache = f", cache {loaded.cache}" if loaded.cache else ""
        self._progress(f"{pair.id} loaded in {load_s:.1f} s ({loaded.kernel}{quantized}{cache})")
        self.current = LiveModel(pair, loaded.model, loaded.tokenizer, tracker, tracker.allocated_before_bytes, device,
                                 compile_settings)
        return self.current

    def close(self, live: LiveModel) -> None:
        """Release a model and check that its GPU memory came back."""
        if self.current is live:
            self.current = None
        start = time.perf_counter()
        model = weakref.ref(live.model) if live.model is not None else lambda: None
        live.model = live.tokenizer = live.tracker = None
        left = sum(free_device_memory(d) for d in self._placement.devices) - live.allocated_before_bytes
        self._ledger.record(live.pair, release_s=time.perf_counter() - start)
        if left > RELEASE_SLACK_BYTES:
            held = holders(model()) if model() is not None else []
            warnings.warn(pytest.PytestWarning(
                f"pytest-quant: {format_bytes(left)} of GPU memory still allocated after releasing {live.pair.id}; "
                + (f"the model is still held by {', '.join(held)}" if held else "something (a test, a global) "
                   "still holds the model") + ", and later VRAM figures may be inflated"))


def timed_import(backend) -> float | None:
    """Import a backend's libraries before its load is timed: the seconds it took (about 0 once imported; None
    where the backend names none), so that ``load_s`` is the load and not the library's first import."""
    if not backend.imports:
        return None
    start = time.perf_counter()
    backend.import_libraries()
    return time.perf_counter() - start


def loaded_problem(loaded) -> str | None:
    """What is wrong with a backend's result (a third-party backend through the hook may return anything)."""
    if loaded is None or not hasattr(loaded, "model"):
        return f"as {type(loaded).__name__}, not a pytest_quant.backends.Loaded"
    if loaded.model is None:
        return "as Loaded(None, ...): no model"
    if not callable(loaded.model):
        return f"as a {type(loaded.model).__name__}, which cannot be called on tokens"
    return None
