#!/usr/bin/env bash
# What the lent H100 runs, one step per device call (no network there; see ../shared/gpu/README.md).
# From the project root, with the wheelhouse carried as .whl:
#   bash benchmarks/gpu_session.sh gate     # GPU tests, suite cold + --snapshot-update, suite warm, worsened baseline
#   bash benchmarks/gpu_session.sh bench    # evaluation speed, decode stability, allocator vs NVML
# Results land under $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/quant-out}; mkdir -p "$OUT"
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/machine.txt"

case "${1:-gate}" in
gate)
  python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -40
  hw=baselines/tiny/nvidia-h100-80gb-hbm3
  rm -rf .pytest_cache
  s1=$(date +%s)
  python3 -m pytest suites --quant-gpu --snapshot-update --junitxml="$OUT/junit-cold.xml" 2>&1 | tee "$OUT/gate-cold.log" | tail -30
  s2=$(date +%s)
  python3 -m pytest suites --quant-gpu --quant-report "$OUT/h100.md" --junitxml="$OUT/junit-warm.xml" 2>&1 | tee "$OUT/gate-warm.log" | tail -30
  s3=$(date +%s)
  echo "gate wall: cold + snapshot-update $((s2 - s1)) s, warm $((s3 - s2)) s" | tee -a "$OUT/machine.txt"
  # deliberately worsened baselines: bnb-nf4's stored perplexity 1.0 better than measured, bnb-int8's
  # stored decode speed 4x what it measured; exactly those two tests must fail
  cp -r "$hw" /tmp/keep
  python3 - "$hw" <<'PY'
import json, sys
hw = sys.argv[1]
for name, key, change in (("test_quality[tiny-bnb-nf4]", "perplexity", lambda v: v - 1.0),
                          ("test_speed[tiny-bnb-int8]", "decode_tokens_per_s", lambda v: v * 4)):
    path = f"{hw}/{name}.json"; doc = json.load(open(path))
    doc["metrics"][key] = round(change(doc["metrics"][key]), 4)
    open(path, "w").write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
PY
  python3 -m pytest suites --quant-gpu -q -rf 2>&1 | tail -12 | tee "$OUT/worsened.log"
  rm -rf "$hw"; cp -r /tmp/keep "$hw"
  tar czf "$OUT/baselines.tgz" "$hw"
  ;;
bench)
  python3 benchmarks/bench_eval_speed.py --device cuda 2>&1 | tee "$OUT/eval_speed.log" | tail -20
  python3 benchmarks/bench_stability.py --device cuda --recipes reference,bnb-nf4,bnb-int8 --processes 5 2>&1 | tee "$OUT/stability.log" | tail -12
  ;;
esac
