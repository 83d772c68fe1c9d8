"""One greedy decode step over transformers' StaticCache, optionally compiled, captured as a CUDA graph.

The prefill runs eagerly and fills the cache; the step reads the token and position buffers, runs the model
on one token per sequence, and writes its argmax back into the token buffer and advances the position, all
on the device: replaying the graph N times decodes N tokens with no host work between steps. The cache
tracks its write position itself (``StaticLayer.cumulative_length``, a device tensor advanced in place), so
resetting a run means zeroing those counters and prefilling again.

``compiled=True`` runs the step's forward through ``torch.compile`` (default mode, ``dynamic=False``,
``fullgraph=True``, without it where the forward has a graph break) before the capture: gpt-fast's approach,
and how a deployment runs torchao's kernels. The compile happens on the first step, on the current stream,
and is timed on its own (``compile_s``). ``torch.compile(mode="reduce-overhead")`` inside ``generate()``
fails on transformers 5.x ("accessing tensor output of CUDAGraphs that has been overwritten") and
``generate(cache_implementation="static")`` runs at a fifth of this speed, hence a manual capture.
"""

from __future__ import annotations

import time

CAPTURE_WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, lazy kernel set-up)


class CompileError(RuntimeError):
    """``torch.compile`` could not compile the decode step; ``seconds`` were spent trying."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


class StaticDecoder:
    """Greedy decoding of ``batch_size`` copies of a prompt over a ``StaticCache`` of ``max_cache_len``.

    ``compile()`` (after a prefill) compiles the step; ``capture()`` records one step as a CUDA graph;
    without either, ``step()`` runs the same code eagerly (on CPU, or as the reference the other paths'
    tokens are compared with). ``close()`` frees the graph, its memory pool, the compiled code and the
    cache; use it as a context manager.
    """

    def __init__(self, model, batch_size: int, max_cache_len: int):
        import torch
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.max_cache_len = max_cache_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        self.token_ids = torch.zeros((batch_size, 1), dtype=torch.long, device=self.device)
        self.position_ids = torch.zeros((batch_size, 1), dtype=torch.long, device=self.device)
        self.graph = None
        self.forward = model  # the compiled forward after compile()
        self.compiled = False
        self.fullgraph: bool | None = None
        self.graph_break = ""  # why fullgraph=True failed, where it did
        self.prefilled = False
        self.logits = None  # a [batch, vocab] buffer the step also writes its logits into, where a check asks

    def keep_logits(self) -> None:
        """Make every step also write its last-position logits into ``logits`` (for checks, never when timing;
        call it before compile() and capture() so that the copy is part of what they record)."""
        import torch

        self.logits = torch.empty((self.batch_size, self.model.config.vocab_size), dtype=torch.float32,
                                  device=self.device)

    def __enter__(self) -> StaticDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prefill(self, prompt) -> None:
        """Run ``prompt`` ([batch, tokens]) from position 0, put its greedy next token in the token buffer."""
        import torch

        if prompt.shape[1] >= self.max_cache_len:
            raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves no room in a cache of {self.max_cache_len}")
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()
        positions = torch.arange(prompt.shape[1], device=self.device).expand(prompt.shape[0], -1)
        out = self.model(input_ids=prompt, position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.token_ids.copy_(out.logits[:, -1:].argmax(-1))
        self.position_ids.fill_(prompt.shape[1])
        self.prefilled = True

    def _step(self) -> None:
        out = self.forward(
            input_ids=self.token_ids, position_ids=self.position_ids, past_key_values=self.cache, use_cache=True
        )
        self.token_ids.copy_(out.logits[:, -1:].argmax(-1))
        if self.logits is not None:
            self.logits.copy_(out.logits[:, -1])
        self.position_ids.add_(1)

    def compile(self) -> float:
        """Compile the step (it runs once, so prefill again afterwards); the seconds it took. Tries
        ``fullgraph=True`` first, then without it (``graph_break`` says why). Raises ``CompileError``."""
        import torch

        if not self.prefilled:
            raise RuntimeError("prefill before compile: the static cache allocates itself on its first update")
        start = time.perf_counter()
        failures = []
        for fullgraph in (True, False):
            self.forward = torch.compile(self.model, dynamic=False, fullgraph=fullgraph)
            try:
                self._step()
                _synchronize(self.device)
            except Exception as error:  # graph breaks under fullgraph, a backend's failure, an unsupported op
                failures.append(capture_failure_reason(error))
                self.forward = self.model
                torch._dynamo.reset()
                if not (fullgraph and _is_graph_break(error)):
                    raise CompileError(f"torch.compile failed: {failures[-1]}", time.perf_counter() - start) from error
                continue
            self.compiled, self.fullgraph = True, fullgraph
            self.graph_break = failures[0] if failures else ""
            return time.perf_counter() - start
        raise AssertionError("unreachable")  # the second pass either returns or raises

    def capture(self) -> None:
        """Capture one step as a CUDA graph. Needs a prefill first (it sizes the cache); clobbers the
        decoding state, so prefill again before replaying. Raises whatever the capture raised."""
        import torch

        if self.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        if not self.prefilled:
            raise RuntimeError("prefill before capture: the static cache allocates itself on its first update")
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except BaseException:
            del graph
            _recover(self.device)
            raise
        self.graph = graph

    def step(self) -> None:
        """Decode one token per sequence (the result lands in ``token_ids``)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def close(self) -> None:
        """Drop the graph (its private memory pool goes with it), the compiled code (dynamo's caches hold the
        model's code and guards on it) and the cache's tensors."""
        self.graph = None
        if self.compiled:
            import torch

            self.forward = None
            torch._dynamo.reset()
        if self.cache is not None:
            for layer in self.cache.layers:
                layer.keys = layer.values = None
        self.cache = self.token_ids = self.position_ids = self.model = self.forward = self.logits = None
        self.compiled = False


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_graph_break(error: BaseException) -> bool:
    """Whether ``torch.compile(fullgraph=True)`` refused a graph break (retry without fullgraph)."""
    from torch._dynamo.exc import Unsupported

    return isinstance(error, Unsupported)


def _recover(device) -> None:
    """After a failed capture: wait for the device, drop the capture's pool (cached blocks)."""
    import gc

    import torch

    gc.collect()
    try:
        torch.cuda.synchronize(device)
    finally:
        torch.cuda.empty_cache()


def capture_failure_reason(error: BaseException) -> str:
    """One line for a report: the first error of the chain (a failed capture's own end raises again, "operation
    failed due to a previous error during capture", hiding the cause), then the last if it differs."""
    chain = [error]
    while chain[-1].__context__ is not None and len(chain) < 8:
        chain.append(chain[-1].__context__)

    def line(e: BaseException) -> str:
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"

    first, last = line(chain[-1]), line(chain[0])
    return (first if first == last else f"{first} (then {last})")[:300]
