"""The backend registry: one entry per quantization library, its module imported only when a recipe of it loads.

An entry says what the backend needs installed, how to install it, the device kinds it runs on, the recipe
fields it accepts (its own, and those of transformers config classes it names) and where its ``load``
lives. Third parties add entries through the ``pytest_quant_backends`` hook (see ``pytest_quant.hookspecs``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..hardware import device_kind
from .common import default_dtype, load_tokenizer, quantized_linear_classes  # noqa: F401 - re-exported


@dataclass(frozen=True)
class LoadRequest:
    model_path: Path
    recipe: Any  # recipes.Recipe
    device: str  # "cpu" or "cuda:N"
    cache_dir: Path | None = None  # where quantized models may be cached (backends that quantize)
    calibration_text: Path | None = None
    # Called right before the model that will be measured starts loading, after any quantization:
    # memory is measured from there, so a one-off quantization does not count against a VRAM budget.
    before_load: Callable[[], None] = lambda: None
    device_map: str | None = None  # "auto": spread the model over the visible GPUs (--quant-device auto)
    # --quant-trust-remote-code: what every from_pretrained of the backend passes as trust_remote_code
    trust_remote_code: bool = False

    @property
    def placement(self) -> str:
        """What a backend passes as ``device_map``: the device, or "auto"."""
        return self.device_map or self.device


@dataclass
class Loaded:
    """What a backend hands back: the live model and what it knows about how it was made."""

    model: Any
    tokenizer: Any
    dtype: str
    kernel: str = ""  # the class of the quantized linear layers that ran
    quantize_seconds: float = 0.0
    cache: str = ""  # "hit", "miss", "rebuilt" or "" where nothing is cached
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """One registry entry.

    ``load`` and ``validate`` are callables or ``"module:function"`` strings (imported when first used, so
    registering a backend imports nothing heavy). ``validate(settings)`` raises ValueError naming a bad
    field; it runs at start-up, before any model loads. ``requires_of(model_path)`` replaces ``requires``
    where what is needed depends on the checkpoint. ``calls_before_load``: the backend calls
    ``request.before_load()`` itself (after quantizing, right before the measured load).
    """

    name: str
    load: Callable[[LoadRequest], Loaded] | str
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    fields: frozenset[str] | str = frozenset()  # or "module:NAME" of such a set, read when first needed
    config_classes: tuple[str, ...] = ()  # transformers classes whose keyword arguments are recipe fields
    validate: Callable[[dict[str, Any]], None] | str | None = None
    requires_of: Callable[[Path], tuple[str, ...]] | str | None = None
    calls_before_load: bool = False
    selectable: bool = True  # False: not a recipe a user names (the pre-quantized checkpoint's)
    reference: str = "reference"  # the recipe a user recipe of this backend is compared with
    imports: tuple[str, ...] = ()  # what load imports first (modules or "module:function"): timed as import_s
    # loads image-text-to-text models (models.vision) with their Auto class; False: its recipes skip them, naming why
    vision_language: bool = False

    def missing(self, model_path: Path | None = None) -> list[str]:
        """Import names this backend needs that are not installed (checked without importing them)."""
        requires = self.requires
        if self.requires_of is not None and model_path is not None:
            requires = _resolve(self.requires_of, self.name, "requires_of")(model_path)
        return [name for name in requires if not is_installed(name)]

    def import_libraries(self) -> None:
        """Import what ``imports`` names (a module, or "module:function" that imports a library the way it
        must be), so that the import is timed apart from the load; off the caller's stack (``base.off_stack``),
        so that an error a library keeps from its first import holds none of the caller's frames."""
        from .base import off_stack

        def run() -> None:
            for entry in self.imports:
                if ":" in entry:
                    _resolve(entry, self.name, "imports")()
                else:
                    importlib.import_module(entry)

        off_stack(run)

    def runs_on(self, device: str) -> bool:
        return device_kind(device) in self.devices

    def known_fields(self) -> frozenset[str]:
        """The fields a recipe of this backend may set (reads transformers' signatures lazily)."""
        import inspect

        names = set(self.fields if not isinstance(self.fields, str) else _resolve(self.fields, self.name, "fields"))
        if self.config_classes:
            import transformers

            for cls_name in self.config_classes:
                params = inspect.signature(getattr(transformers, cls_name).__init__).parameters
                names.update(n for n, p in params.items()
                             if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        return frozenset(names)

    def check(self, settings: dict[str, Any]) -> None:
        if self.validate is not None:
            _resolve(self.validate, self.name, "validate")(dict(settings))

    def load_model(self, request: LoadRequest) -> Loaded:
        self.import_libraries()  # before the model exists (about 0 s where the session timed it already)
        if not self.calls_before_load:
            request.before_load()
        return _resolve(self.load, self.name, "load")(request)


def is_installed(name: str) -> bool:
    """Whether an import name can be imported (checked without importing it)."""
    return importlib.util.find_spec(name) is not None


class BackendError(ValueError):
    """A registry entry that cannot be used: a "module:name" that does not import, a name registered twice."""


def check_target(backend: str, what: str, target: Any) -> None:
    """A "module:name" string must have both parts and its top-level package must be installed (checked when
    the entry is registered, importing nothing)."""
    if isinstance(target, str):
        module, sep, name = target.partition(":")
        if not sep or not module or not name.isidentifier():
            raise BackendError(f"backend {backend!r}: {what} = {target!r} is not a 'module:function' string "
                               "(nor a callable)")
        top = module.split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise BackendError(f"backend {backend!r}: {what} = {target!r}: no module named {top!r} is installed; "
                               "install it or fix the name where the backend is registered (a pytest_quant_backends "
                               "hook)")


def _resolve(target: Any, backend: str = "?", what: str = "load") -> Any:
    """``target`` itself, or the attribute a "module:name" string names (imported now); BackendError naming
    the backend, the field and the module when it cannot be imported."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"backend {backend!r}: {what} = {target!r}: module {module!r} cannot be imported "
                           f"({type(exc).__name__}: {exc}); install it or fix the name where the backend is "
                           "registered (a pytest_quant_backends hook)") from None
    try:
        return getattr(imported, name)
    except AttributeError:
        raise BackendError(f"backend {backend!r}: {what} = {target!r}: module {module!r} has no {name!r}") from None


BUILTIN_SOURCE = "pytest-quant's built-in backends"


def _origin(backend: "Backend") -> str:
    """Where an entry's code lives (the file defining its load, or the module a string names), for a collision
    reported without the registering plugin's name."""
    load = backend.load
    if isinstance(load, str):
        return f"a plugin whose load is in module {load.partition(':')[0]!r}"
    code = getattr(load, "__code__", None) or getattr(getattr(load, "__call__", None), "__code__", None)
    if code is not None:
        return f"a plugin whose load is defined in {code.co_filename}"
    module = getattr(load, "__module__", None)
    return f"a plugin whose load is in module {module!r}" if module else "a plugin"


_PKG = "pytest_quant.backends"
BUILTIN_BACKENDS: tuple[Backend, ...] = (
    Backend("reference", f"{_PKG}.reference:load", fields=frozenset({"dtype"}), validate=f"{_PKG}.reference:validate",
            vision_language=True),
    Backend("bitsandbytes", f"{_PKG}.bitsandbytes:load", ("bitsandbytes",), "pip install 'pytest-quant[bnb]'",
            fields=frozenset({"dequantize"}), config_classes=("BitsAndBytesConfig",),
            validate=f"{_PKG}.bitsandbytes:validate", imports=("bitsandbytes",), vision_language=True),
    Backend("gptqmodel", f"{_PKG}.gptqmodel:load", ("gptqmodel", "optimum"), "pip install 'pytest-quant[gptq]'",
            fields=frozenset({"method", "kernel", "calibration", "calibration_samples", "calibration_seq_len",
                              "version", "batch_size"}),
            config_classes=("GPTQConfig", "AwqConfig"), validate=f"{_PKG}.gptqmodel_spec:validate",
            calls_before_load=True, imports=(f"{_PKG}.gptqmodel_spec:import_gptqmodel", "optimum"),
            vision_language=True),
    Backend("torch_dynamic", f"{_PKG}.torch_dynamic:load", install_hint="pip install 'pytest-quant[torchao]'",
            devices=frozenset({"cpu"}), fields=f"{_PKG}.torch_dynamic:FIELDS", validate=f"{_PKG}.torch_dynamic:validate"),
    Backend("torchao", f"{_PKG}.torchao:load", ("torchao",), "pip install 'pytest-quant[torchao]'",
            fields=f"{_PKG}.torchao:FIELDS", validate=f"{_PKG}.torchao:validate", imports=("torchao.quantization",),
            vision_language=True),
    Backend("onnxruntime", f"{_PKG}.onnxruntime:load", ("onnxruntime", "onnx", "onnxscript"),
            "pip install 'pytest-quant[onnx]'", devices=frozenset({"cpu"}),
            fields=f"{_PKG}.onnxruntime:FIELDS", validate=f"{_PKG}.onnxruntime:validate", calls_before_load=True,
            imports=("onnxruntime", "onnx")),
    Backend("neural_compressor", f"{_PKG}.neural_compressor:load", ("neural_compressor",),
            "pip install 'pytest-quant[inc]'", devices=frozenset({"cpu"}),
            fields=f"{_PKG}.neural_compressor:FIELDS", validate=f"{_PKG}.neural_compressor:validate",
            calls_before_load=True, imports=("neural_compressor.torch.quantization",)),
    Backend("modelopt", f"{_PKG}.modelopt:load", ("modelopt",), "pip install 'pytest-quant[modelopt]'",
            devices=frozenset({"cuda"}), fields=f"{_PKG}.modelopt:FIELDS", validate=f"{_PKG}.modelopt:validate",
            calls_before_load=True, imports=("modelopt.torch.quantization",)),
    Backend("compressed_tensors", f"{_PKG}.compressed_tensors:load", ("compressed_tensors",),
            "pip install 'pytest-quant[ct]'", fields=f"{_PKG}.compressed_tensors:FIELDS",
            validate=f"{_PKG}.compressed_tensors:validate", calls_before_load=True, imports=("compressed_tensors",)),
    Backend("auto_round", f"{_PKG}.auto_round:load", ("auto_round",), "pip install 'pytest-quant[autoround]'",
            fields=f"{_PKG}.auto_round:FIELDS", validate=f"{_PKG}.auto_round:validate", calls_before_load=True,
            imports=("auto_round",)),
    Backend("prequantized", f"{_PKG}.prequantized:load", install_hint="pip install 'pytest-quant[gptq]' (GPTQ, AWQ), "
            "'pytest-quant[bnb]' (bitsandbytes), 'pytest-quant[ct]' (compressed-tensors) or 'pytest-quant[autoround]' "
            "(AutoRound)", fields=frozenset({"kernel"}),
            requires_of=f"{_PKG}.checkpoint:requirements", selectable=False),
    Backend("llama_cpp", f"{_PKG}.llama_cpp:load", ("llama_cpp", "gguf"),
            "pip install 'pytest-quant[gguf]' (compiles llama.cpp: minutes)",
            fields=f"{_PKG}.llama_cpp_spec:FIELDS", validate=f"{_PKG}.llama_cpp_spec:validate", calls_before_load=True,
            reference="gguf-reference"),
)


class Registry:
    """The backends of one session: the built-ins, then those third parties register."""

    def __init__(self, backends: Iterable[Backend] = BUILTIN_BACKENDS, source: str = BUILTIN_SOURCE):
        self._backends: dict[str, Backend] = {}
        self._sources: dict[str, str] = {}
        for backend in backends:
            self.add(backend, source)

    def add(self, backend: Backend, source: str | None = None) -> None:
        """Register ``backend``; ``source`` names who registers it (a plugin or conftest), for a collision."""
        if not isinstance(backend, Backend):
            where = f" (from {source})" if source else ""
            raise TypeError(f"pytest_quant_backends must return pytest_quant.backends.Backend entries, got "
                            f"{backend!r}{where}")
        source = source or _origin(backend)
        if backend.name in self._backends:
            raise BackendError(f"backend {backend.name!r} is registered twice: by {self._sources[backend.name]} and "
                               f"by {source}; rename one of them")
        for what in ("load", "validate", "fields", "requires_of"):
            check_target(backend.name, what, getattr(backend, what))
        self._backends[backend.name] = backend
        self._sources[backend.name] = source

    def add_from_hook(self, hook, **kwargs: Any) -> None:
        """Call every implementation of ``hook`` (``config.hook.pytest_quant_backends``) in pluggy's order and
        register what each returns under its plugin's name (a conftest's path, an entry point's name), so a
        collision names both plugins."""
        for impl in reversed(hook.get_hookimpls()):
            if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
                continue
            args = {name: kwargs[name] for name in impl.argnames if name in kwargs}
            for backend in impl.function(**args) or ():
                self.add(backend, f"plugin {impl.plugin_name!r}")

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def names(self, selectable_only: bool = True) -> list[str]:
        return [n for n, b in self._backends.items() if b.selectable or not selectable_only]


DEFAULT_REGISTRY = Registry()


def load(request: LoadRequest, registry: Registry = DEFAULT_REGISTRY) -> Loaded:
    return registry[request.recipe.backend].load_model(request)


def missing_requirements(backend: str, registry: Registry = DEFAULT_REGISTRY) -> list[str]:
    return registry[backend].missing()
