"""A GGUF file run by llama.cpp (llama-cpp-python), called the way the plugin calls a transformers causal LM, with
llama.cpp's own tokenizer beside it.

``LlamaCppCausalLM(input_ids=[B, L], logits_to_keep=n).logits`` evaluates each row from an empty KV cache in one
``llama_decode`` with logits for every position (``logits_all``), the float32 logits llama.cpp's
``perplexity`` reads; ``model(ids, past_key_values=cache, use_cache=True)`` appends to llama.cpp's KV cache
(batch 1: greedy generation). ``measure_throughput`` times prefill and greedy decode with llama.cpp's own
counters (``llama_perf_context``) at the recipe's fixed thread count. ``get_memory_footprint()`` is the GGUF
file's size; ``buffers`` holds llama.cpp's own buffer sizes (model, KV cache, compute), as its log reports them.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from .base import CausalLMOutput, RuntimeCausalLM
from .llama_cpp_spec import decode_mode

BUFFER_LINE = re.compile(r"(\S+?)\s+(model|KV|compute|output|RS) buffer size\s*=\s*([0-9.]+) MiB")
MAX_CONTEXT = 4096  # the context llama.cpp allocates: the model's own, capped (eval windows are 512)


class LlamaCppTokenizer:
    """llama.cpp's tokenizer of a GGUF file, shaped like what the plugin calls on a transformers tokenizer."""

    pytest_quant_family = "llama.cpp"  # the eval windows are tokenized once per family (run.inputs)

    def __init__(self, llm):
        self._llm = llm
        self.bos_token_id = int(llm.token_bos()) if llm.token_bos() >= 0 else None
        self.eos_token_id = int(llm.token_eos()) if llm.token_eos() >= 0 else None
        self.pad_token_id = self.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # parse_special off, as llama.cpp's perplexity tokenizes its text
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False))

    def __call__(self, text: str, add_special_tokens: bool = False, **unused) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in (self.bos_token_id, self.eos_token_id))]
        return self._llm.detokenize(ids).decode("utf-8", errors="replace")

    def apply_chat_template(self, *args, **kwargs):
        raise ValueError("the llama_cpp backend renders no chat template: give generation_agreement plain-text prompts")


class LlamaCppCache:
    """The tokens llama.cpp's KV cache holds for this generation (checked before appending to it)."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def get_seq_length(self) -> int:
        return len(self.tokens)


class LlamaCppCausalLM(RuntimeCausalLM):
    def __init__(self, gguf_file: Path, threads: int, n_gpu_layers: int = 0):
        from llama_cpp import Llama

        from ..models.gguf_header import read_header

        super().__init__()
        self.path = Path(gguf_file)
        header = read_header(self.path)
        self.threads = threads
        n_ctx = min(int(header.context_length or 512), MAX_CONTEXT)
        lines: list[str] = []
        with _captured_log(lines):
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, logits_all=True,
                             n_threads=threads, n_threads_batch=threads, n_gpu_layers=n_gpu_layers, verbose=False,
                             seed=0)
        self.buffers = parse_buffers(lines)
        self.file_type = header.file_type_name
        self.tokenizer = LlamaCppTokenizer(self.llm)
        self.config = _Config(n_ctx, self.llm.n_vocab(), header.architecture)
        self.generation_config = _Config(n_ctx, self.llm.n_vocab(), header.architecture)
        self.generation_config.eos_token_id = self.tokenizer.eos_token_id

    # -- what the plugin calls on a transformers model ---------------------------------------------
    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        return self.path.stat().st_size

    def forward(self, input_ids=None, past_key_values=None, use_cache=False, logits_to_keep=0, **unused):
        import numpy as np
        import torch

        rows = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(r) for r in input_ids]
        if past_key_values is not None or use_cache:
            if len(rows) != 1:
                raise ValueError(f"llama_cpp: a KV-cached call takes one sequence, got {len(rows)}")
            tokens = (past_key_values.tokens if past_key_values is not None else []) + list(rows[0])
            logits = self._extend(tokens, len(rows[0]))
            return CausalLMOutput(torch.from_numpy(logits[None]), LlamaCppCache(tokens))
        keep = logits_to_keep or len(rows[0])
        out = np.stack([self._evaluate(row)[-keep:] for row in rows])
        return CausalLMOutput(torch.from_numpy(out))

    def _evaluate(self, tokens: list[int]):
        """Logits [len(tokens), vocab] of ``tokens`` from an empty KV cache."""
        self.llm.reset()
        self.llm.eval(tokens)
        return self.llm.scores[: len(tokens)].copy()

    def _extend(self, tokens: list[int], new: int):
        """Logits of the last ``new`` of ``tokens``, reusing the KV cache when it holds the ones before them."""
        held = self.llm.n_tokens
        if held == len(tokens) - new and list(self.llm.input_ids[:held]) == tokens[:held]:
            self.llm.eval(tokens[held:])
        else:
            self.llm.reset()
            self.llm.eval(tokens)
        return self.llm.scores[len(tokens) - new: len(tokens)].copy()

    # -- decode speed from llama.cpp's own counters ------------------------------------------------
    def measure_throughput(self, prompt_ids, decode_tokens: int, repeats: int, warmup_runs: int, batch_size: int = 1):
        import llama_cpp

        from ..measure.throughput import ThroughputMeasurement

        if batch_size != 1:
            raise ValueError(f"llama_cpp: decode is timed one sequence at a time; batch {batch_size} asked for")
        ctx = self.llm.ctx
        prefill, decode = [], []
        for run in range(warmup_runs + repeats):
            self.llm.reset()
            llama_cpp.llama_perf_context_reset(ctx)
            self.llm.eval(list(prompt_ids))
            for _ in range(decode_tokens):
                self.llm.eval([int(self.llm.scores[self.llm.n_tokens - 1].argmax())])
            perf = llama_cpp.llama_perf_context(ctx)
            if run >= warmup_runs:
                prefill.append(1000.0 * perf.n_p_eval / perf.t_p_eval_ms if perf.t_p_eval_ms > 0 else float("inf"))
                decode.append(1000.0 * perf.n_eval / perf.t_eval_ms if perf.t_eval_ms > 0 else float("inf"))
        median = statistics.median(decode)
        spread = lambda values: 100.0 * (max(values) - min(values)) / statistics.median(values)  # noqa: E731
        return ThroughputMeasurement(
            prefill_tokens_per_s=statistics.median(prefill), decode_tokens_per_s=median,
            decode_tokens_per_s_per_sequence=median, prefill_spread_percent=spread(prefill),
            decode_spread_percent=spread(decode),
            decode_cv_percent=100.0 * statistics.pstdev(decode) / median if len(decode) > 1 else 0.0,
            prompt_tokens=len(prompt_ids), decode_tokens=decode_tokens, repeats=repeats, warmup_runs=warmup_runs,
            batch_size=1, decode_mode=decode_mode(self.threads), requested_decode_mode=decode_mode(self.threads))

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()


class _Config:
    def __init__(self, n_ctx: int, vocab: int, architecture: str | None):
        self.max_position_embeddings = n_ctx
        self.vocab_size = vocab
        self.model_type = architecture
        self.eos_token_id = None


def parse_buffers(lines: list[str]) -> dict[str, int]:
    """llama.cpp's buffer sizes from its load log ("CPU_Mapped model buffer size = 14.03 MiB"), in bytes, by
    kind (model, KV, compute, output), summed over devices."""
    found: dict[str, int] = {}
    for line in lines:
        for _device, kind, mib in BUFFER_LINE.findall(line):
            found[kind] = found.get(kind, 0) + int(round(float(mib) * (1 << 20)))
    return found


class _captured_log:
    """llama.cpp's log lines while a model loads (its own buffer sizes are only reported there)."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def __enter__(self):
        import ctypes

        import llama_cpp

        lines = self.lines

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            lines.append(text.decode("utf-8", errors="replace") if text else "")

        self._callback = callback  # kept alive while llama.cpp may call it
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: Any) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
