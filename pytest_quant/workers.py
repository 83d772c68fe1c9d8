"""One GPU (or one group of GPUs) per pytest-xdist worker, given before the worker initialises CUDA.

The controller reads the GPUs it may use (``CUDA_VISIBLE_DEVICES``, else every GPU torch counts), checks that
there is one for each worker, and hands each worker its own through ``workerinput`` as it starts. The worker
sets ``CUDA_VISIBLE_DEVICES`` from it first thing in its ``pytest_configure``, so its ``cuda:0`` is its own GPU
(with ``--quant-device auto``, its own group of GPUs). A worker replacing a crashed one gets the GPU the crashed
one held. Under xdist's ``--dist load`` (its default) pytest-quant schedules the tests of one model x recipe
onto one worker, so a quantized model loads once, on one GPU, and the worker measures the reference it needs
on that same GPU (or reads it from the cached reference). (xdist's own ``loadgroup`` cannot do it under
pytest 9.2: the group suffix it writes to ``item._nodeid`` is no longer read.)
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

import pytest

from .hardware import cuda_visible_entries

WORKERINPUT_KEY = "quant_cuda_visible_devices"


def visible_gpus(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's valid entries, else
    ``0 .. N-1`` for the N GPUs torch counts."""
    entries = cuda_visible_entries(environ)
    if entries is not None:
        return entries
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def describe(visible: tuple[str, ...], environ: Mapping[str, str] = os.environ) -> str:
    """'2 GPUs (CUDA_VISIBLE_DEVICES='0,1')' for messages."""
    where = environ.get("CUDA_VISIBLE_DEVICES")
    return (f"{len(visible)} GPU{'' if len(visible) == 1 else 's'} visible"
            + (f" (CUDA_VISIBLE_DEVICES={where!r})" if where is not None else ""))


def plan(workers: int, visible: tuple[str, ...], shard: bool) -> tuple[tuple[str, ...], ...]:
    """Each worker's GPUs: one each, or with ``shard`` (``--quant-device auto``) an equal group each.

    Raises ValueError naming the counts when there are more workers than GPUs."""
    if workers > len(visible):
        raise ValueError(f"{workers} workers need {workers} GPUs")
    per_worker = len(visible) // workers if shard else 1
    return tuple(tuple(visible[i * per_worker:(i + 1) * per_worker]) for i in range(workers))


def distributed_workers(config: pytest.Config) -> int:
    """How many xdist workers this controller starts (0 without xdist, under ``-n 0``, on a worker, or when
    any worker is not a local process: GPUs of another host are not this host's to hand out)."""
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        return 0
    specs = list(getattr(config.option, "tx", None) or ())
    if not specs or any(not str(spec).startswith("popen") for spec in specs):
        return 0
    return len(specs)


def pair_scope(nodeid: str, pair_ids: tuple[str, ...]) -> str:
    """The model x recipe a test id belongs to ('t.py::test_q[tiny-bnb-nf4-3]' -> 'tiny-bnb-nf4'), or the id
    itself for a test of no pair."""
    _, bracket, params = nodeid.partition("[")
    if bracket:
        for pair in sorted(pair_ids, key=len, reverse=True):
            if re.search(rf"(?:^|-){re.escape(pair)}(?:-|\]$)", params):
                return pair
    return nodeid


def pair_scheduler(config: pytest.Config, log: Any, pair_ids: tuple[str, ...]) -> Any:
    """xdist's load-by-scope scheduling with a model x recipe as the scope."""
    from xdist.scheduler import LoadScopeScheduling

    class PairScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return pair_scope(nodeid, pair_ids)

    return PairScheduling(config, log)


@dataclass
class GpuAssignment:
    """The controller's side: hands each starting worker a free slot of GPUs (none on CPU), and takes it back
    when the worker goes down (a replacement worker gets it); under ``--dist load``, schedules by pair."""

    slots: tuple[tuple[str, ...], ...]
    pair_ids: tuple[str, ...] = ()
    held: dict[str, int] = field(default_factory=dict)  # worker id -> index of its slot

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if self.pair_ids and config.getvalue("dist") == "load":
            return pair_scheduler(config, log, self.pair_ids)
        return None

    def pytest_configure_node(self, node: Any) -> None:
        if not self.slots:
            return
        taken = set(self.held.values())
        free = next((i for i in range(len(self.slots)) if i not in taken), None)
        if free is None:  # cannot happen while workers <= slots; never hand one GPU to two workers
            raise RuntimeError(f"pytest-quant: no free GPU for worker {node.gateway.id}: {len(self.slots)} "
                               f"slot(s) held by {sorted(self.held)}")
        self.held[node.gateway.id] = free
        node.workerinput[WORKERINPUT_KEY] = ",".join(self.slots[free])

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.held.pop(node.gateway.id, None)


def assign_on_controller(config: pytest.Config, gpu: bool, device_given: str | None, shard: bool,
                         pair_ids: tuple[str, ...]) -> str | None:
    """On the xdist controller: check the workers fit the GPUs and register the assignment (and, under
    ``--dist load``, scheduling by pair); raises pytest.UsageError naming the counts. Returns a line to print."""
    workers = distributed_workers(config)
    if workers == 0:
        return None
    notes = []
    grouped = pair_ids if getattr(config.option, "dist", None) == "load" else ()
    if grouped:
        notes.append("each model x recipe runs whole on one xdist worker")
    if not gpu or device_given not in (None, "auto"):
        if gpu and workers > 1:
            raise pytest.UsageError(
                f"--quant-device {device_given} puts all {workers} xdist workers on one GPU; drop it to give each "
                "worker its own GPU, or run one worker (-n 1)")
        config.pluginmanager.register(GpuAssignment((), grouped), "quant-gpu-assignment")
        return "; ".join(notes) or None
    visible = visible_gpus()
    try:
        slots = plan(workers, visible, shard)
    except ValueError as exc:
        raise pytest.UsageError(
            f"-n {workers} with --quant-gpu: {exc}, found {describe(visible)}; use -n {max(len(visible), 1)} "
            "or fewer, or -n auto (one worker per GPU)") from None
    config.pluginmanager.register(GpuAssignment(slots, grouped), "quant-gpu-assignment")
    spare = len(visible) - sum(len(s) for s in slots)
    notes.append(f"{workers} xdist worker(s), GPUs " + " | ".join(",".join(s) for s in slots)
                 + (f" ({spare} left idle)" if spare else ""))
    return "; ".join(notes)


def apply_on_worker(config: pytest.Config) -> str | None:
    """On an xdist worker: make the GPUs the controller gave it the only visible ones, before CUDA starts.
    Returns them, or None when the controller gave none."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or WORKERINPUT_KEY not in workerinput:
        return None
    given = str(workerinput[WORKERINPUT_KEY])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != given:
        raise pytest.UsageError(
            f"xdist worker {workerinput.get('workerid')}: CUDA was initialised (by a conftest or plugin at import) "
            f"before pytest-quant could give the worker its GPU(s) {given}; move the CUDA call into a fixture")
    os.environ["CUDA_VISIBLE_DEVICES"] = given
    return given


def auto_workers(gpu: bool, shard: bool) -> int | None:
    """``-n auto`` with --quant-gpu: one worker per visible GPU (one worker for ``--quant-device auto``, which
    spreads each model over all of them); None leaves the choice to xdist (one per CPU)."""
    if not gpu:
        return None
    return 1 if shard else max(len(visible_gpus()), 1)
