"""Reference measurement for decode speed on the GPU machine, independent of the plugin: greedy decode of a
1.1B-shape Llama (random weights, built on the GPU) at batch 1, one step over transformers' StaticCache captured
as a CUDA graph, with the step run eagerly inside the graph ("eager+graph") and compiled by torch.compile first
("compiled+graph", gpt-fast's approach). 128 steps, 3 warm-up + 5 timed runs, median tok/s.

    python3 probe_compiled_decode.py [--recipes bf16,torchao-int8wo,bnb-nf4,torchao-fp8] [--json out.json]

Measured 2026-12-01 on the H200 (torch 2.11, transformers 5.23, torchao 0.18, bitsandbytes 0.50.2):
bf16 434.6 -> 706.1 tok/s (compile 42 s); torchao-int8wo 185.0 -> 978.6 (compile 234 s); bnb-nf4 443.7 -> 713.4
(compile 45 s); torchao-fp8 (per row) 242.9 eager+graph, compile not finished in 6 minutes. Those figures were
taken with the same method through the project's StaticDecoder; this standalone file's cache handling was checked
on CPU against generate() (same tokens) and has not itself run on the GPU yet.

Copied from ../shared/gpu (2026-12-01); added ``--modes`` (run only the modes asked for: the plugin's compiled
figures are checked against "compiled+graph"). Nothing in the timing was changed.
"""
import argparse, json, statistics, time

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, StaticCache

CFG = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
PATH = "/tmp/probe-1b"


def build(recipe):
    if recipe == "bnb-nf4":
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(PATH, device_map="cuda:0", quantization_config=qc).eval()
    model = AutoModelForCausalLM.from_pretrained(PATH, dtype=torch.bfloat16, device_map="cuda:0").eval()
    if recipe.startswith("torchao-"):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow, quantize_
        quantize_(model, Int8WeightOnlyConfig() if recipe == "torchao-int8wo"
                  else Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return model


def decode_rate(model, prompt, steps=128, warmup=3, repeats=5):
    cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + steps + 8)
    tok = torch.zeros((1, 1), dtype=torch.long, device="cuda")
    pos = torch.zeros((1, 1), dtype=torch.long, device="cuda")

    def prefill():
        for layer in cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()
        out = model(input_ids=prompt, position_ids=torch.arange(prompt.shape[1], device="cuda")[None],
                    past_key_values=cache, use_cache=True)
        tok.copy_(out.logits[:, -1:].argmax(-1)); pos.fill_(prompt.shape[1])

    def step():
        out = model(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True)
        tok.copy_(out.logits[:, -1:].argmax(-1)); pos.add_(1)

    with torch.inference_mode():
        start = time.perf_counter()
        prefill()
        side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side); torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        capture_s = time.perf_counter() - start
        rates = []
        for i in range(warmup + repeats):
            prefill(); torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(steps):
                graph.replay()
            torch.cuda.synchronize()
            if i >= warmup:
                rates.append(steps / (time.perf_counter() - t))
    return statistics.median(rates), capture_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="bf16,torchao-int8wo,bnb-nf4")
    ap.add_argument("--modes", default="eager+graph,compiled+graph")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        LlamaForCausalLM(LlamaConfig(**CFG)).to(torch.bfloat16).save_pretrained(PATH)
    prompt = torch.randint(0, CFG["vocab_size"], (1, 128), device="cuda")
    results = {}
    for recipe in args.recipes.split(","):
        for compiled in (False, True):
            key = f"{recipe} {'compiled+graph' if compiled else 'eager+graph'}"
            if key.split()[1] not in args.modes.split(","):
                continue
            torch._dynamo.reset()
            try:
                model = build(recipe)
                if compiled:
                    model.forward = torch.compile(model.forward, dynamic=False)
                rate, capture_s = decode_rate(model, prompt)
                results[key] = {"decode_tokens_per_s": round(rate, 1), "capture_or_compile_s": round(capture_s, 1)}
            except Exception as error:  # report and go on to the next
                results[key] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            print(key, results[key], flush=True)
            model = None
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
