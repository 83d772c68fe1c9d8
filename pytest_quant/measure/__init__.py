"""What is measured on a loaded model: VRAM, throughput and quality (perplexity, KL divergence, top-1 agreement)."""
