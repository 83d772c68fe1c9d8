"""Where ``torch.compile`` keeps what it compiled, and whether a compile found it there.

Inductor's FX graph cache and autotuning results go under ``TORCHINDUCTOR_CACHE_DIR``, Triton's kernels under
``TRITON_CACHE_DIR``; both are read when a compile starts, so ``use_directory`` must run before the first
compile of the process (the plugin passes ``<--quant-cache-dir>/inductor``). A second process with the same
directory loads the compiled graphs instead of generating and compiling their kernels again: dynamo still
traces the model, so a warm compile is cheaper, not free. ``CacheCounter`` tells a hit from a miss by
inductor's own counters.

Inductor's settings are process-wide, and libraries change them while they load: torchao's quantization
(``set_inductor_config=True``, its default) turns on coordinate-descent tuning for every later compile of the
process, which made the next recipes' compiles take minutes (torchao-nvfp4 188 s, torchao-mxfp4 135 s on the
H200 after torchao-fp8's load) and their figures depend on what ran before them. ``changes_undone`` puts the
settings back after a load and returns what the library set; ``applied`` sets it again only while that
recipe's own decode step compiles.

torch before 2.12 forgets a warm cache's coordinate-descent result: a graph loaded from the FX graph cache
brings its kernels as statically launched autotuners, and their recheck of the autotuning cache keeps a cached
best config only for kernels that had several, so every one-config kernel is tuned again (torchao-int8wo at the
1.1B shape on the H200, torch 2.11: 424 tuning benchmarks cold, a warm compile of 68 s against 116 s cold; fixed
in 2.12's ``recheck_autotune_cache``). ``applied`` therefore turns the static launcher off while such a compile
runs with coordinate-descent tuning on: the kernels then load through the path that reads the cached best
config (int8wo, same machine and run: 45.9 s warm against 171.5 s cold, 63 tuning benchmarks instead of 445).
The decode step is replayed as a CUDA graph, so how its kernels are launched costs it nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

HIT, MISS, PARTIAL = "hit", "miss", "partial"


def use_directory(directory: str | os.PathLike) -> Path:
    """Keep inductor's and Triton's caches under ``directory`` (created); returns it. A process that already
    compiled with another directory keeps what it loaded, and compiles from now on into this one."""
    path = Path(directory).expanduser().resolve()
    (path / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return path


def _cache_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"]), int(counters["inductor"]["fxgraph_cache_miss"])


class CacheCounter:
    """Inductor's FX graph cache hits and misses between ``__init__`` and ``status()``: "hit" (every graph
    came from the cache), "miss" (every graph was compiled), "partial" (some of each), "" (no graph looked up:
    nothing compiled, or the cache is off)."""

    def __init__(self):
        self.start = _cache_counts()

    def status(self) -> str:
        hits, misses = (now - then for now, then in zip(_cache_counts(), self.start))
        if hits and misses:
            return PARTIAL
        return HIT if hits else MISS if misses else ""


def inductor_settings() -> dict[str, Any]:
    """A copy of inductor's process-wide settings (dotted names for nested ones, e.g. ``triton.cudagraphs``)."""
    import torch._inductor.config as inductor_config

    return inductor_config.get_config_copy()


def changes_undone(before: dict[str, Any]) -> dict[str, Any]:
    """Put back every inductor setting that differs from ``before`` (taken before a library's load); returns
    the settings the library had made, by name."""
    import torch._inductor.config as inductor_config

    changed = {}
    for name, value in inductor_config.get_config_copy().items():
        if name in before and not _same(before[name], value):
            changed[name] = value
            setattr(inductor_config, name, before[name])
    return changed


STATIC_LAUNCHER_RECHECK_FIXED = (2, 12)  # the torch release whose recheck keeps a one-config kernel's tuning


def torch_release() -> tuple[int, int]:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def with_warm_cache_fix(settings: dict[str, Any] | None) -> dict[str, Any]:
    """``settings`` plus ``use_static_cuda_launcher = False`` where torch (< 2.12) would tune again, on a warm
    cache, what coordinate-descent tuning (on in ``settings`` or process-wide) already found."""
    import torch._inductor.config as inductor_config

    merged = dict(settings or {})
    tuning = merged.get("coordinate_descent_tuning", inductor_config.coordinate_descent_tuning)
    static = merged.get("use_static_cuda_launcher", getattr(inductor_config, "use_static_cuda_launcher", False))
    if tuning and static and torch_release() < STATIC_LAUNCHER_RECHECK_FIXED:
        merged["use_static_cuda_launcher"] = False
    return merged


@contextmanager
def applied(settings: dict[str, Any] | None) -> Iterator[None]:
    """Inductor's settings with ``settings`` on top for the block, and the warm-cache fix where this torch needs
    it (``with_warm_cache_fix``); nothing done for neither."""
    settings = with_warm_cache_fix(settings)
    if not settings:
        yield
        return
    import torch._inductor.config as inductor_config

    with inductor_config.patch(settings):
        yield


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value whose == is not a truth value
        return a is b
