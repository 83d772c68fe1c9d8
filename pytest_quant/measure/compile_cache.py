"""Where ``torch.compile`` keeps what it compiled, and whether a compile found it there.

Inductor's FX graph cache and autotuning results go under ``TORCHINDUCTOR_CACHE_DIR``, Triton's kernels under
``TRITON_CACHE_DIR``; both are read when a compile starts, so ``use_directory`` must run before the first
compile of the process (the plugin passes ``<--quant-cache-dir>/inductor``). A second process with the same
directory loads the compiled graphs instead of generating and compiling their kernels again: dynamo still
traces the model, so a warm compile is cheaper, not free. ``CacheCounter`` tells a hit from a miss by
inductor's own counters.
"""

from __future__ import annotations

import os
from pathlib import Path

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
