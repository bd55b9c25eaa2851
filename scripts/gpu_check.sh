#!/usr/bin/env bash
# The GPU check (issue 39): bf16 + padding-free packing (+ flash-attention's variable-length kernel when
# flash_attn is installed) + FSDP2 on one GPU against the same run without FSDP, then the training
# throughput table against sentence-transformers' trainer. For a session whose device tool lends a GPU.
#
# The GPU machine has torch, transformers, accelerate, peft and sentence-transformers but no network and
# neither this project's other packages nor ../shared; prepare both here first (both folders git-ignored):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 datasets==5.2.0 dill multiprocess \
#       gguf==0.19.0
#   mkdir -p .gpu-data/senteval && cp -r ../shared/data/senteval/STS ../shared/data/senteval/MRPC .gpu-data/senteval/
# then run it through the device tool: command "bash scripts/gpu_check.sh", carry [".whl", ".gpu-data"].
# SmolLM2's weights cannot travel (538 MB), so the check trains its architecture with random weights
# (configs/model/smollm2-135m-shape.yaml): the speed and memory are SmolLM2-135M's, the scores are not.
# Smoke-test the commands on a CPU with GPU_CHECK_SMOKE=1 (a tiny model, a few steps).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 CPT_DATA_DIR=${CPT_DATA_DIR:-.gpu-data}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/device.txt"

MODEL=smollm2-135m-shape; STEPS=40; BATCH=64; LENGTH=128; THROUGHPUT=(--steps 6 --rounds 2)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then MODEL=tiny-random; STEPS=3; BATCH=8; LENGTH=48; THROUGHPUT=(--steps 3 --rounds 1); fi
ATTN=sdpa
python3 -c "import flash_attn" 2>/dev/null && ATTN=flash_attention_2
COMMON=(model=$MODEL model.attn_implementation=$ATTN trainer.steps=$STEPS trainer.batch_size=$BATCH
        trainer.max_length=$LENGTH trainer.packing=true trainer.mixed_precision=bf16 trainer.train_top_layers=null
        trainer.val_pairs=0 trainer.eval_every=0 logging=none)
[ "$MODEL" = tiny-random ] && COMMON+=(trainer=tiny trainer.packing=true)

# 1. One GPU, FSDP2 (the 8-GPU config cut to one process) and plainly: the same losses within bf16 rounding.
accelerate launch --config_file configs/accelerate/fsdp_1node_8gpu.yaml --num_processes 1 \
    train/contrastive.py "${COMMON[@]}" hydra.run.dir="$OUT/fsdp" 2>&1 | tail -n 5 | tee "$OUT/fsdp.log"
accelerate launch --num_processes 1 --mixed_precision bf16 \
    train/contrastive.py "${COMMON[@]}" hydra.run.dir="$OUT/plain" 2>&1 | tail -n 5 | tee "$OUT/plain.log"
python3 - "$OUT" <<'PY' | tee "$OUT/fsdp_vs_plain.txt"
import json, sys
from pathlib import Path
runs = {name: [json.loads(line) for line in (Path(sys.argv[1]) / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("fsdp", "plain")}
for name, records in runs.items():
    seconds = sorted(r["samples_seen"] / r["step"] / r["pairs_per_s"] for r in records if "pairs_per_s" in r)[1:]
    print(f"{name}: final loss {records[-1]['loss']:.5f}, median s/step {seconds[len(seconds) // 2]:.3f}, "
          f"tokens/s {records[-1]['tokens_per_s']:.0f}")
gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(runs["fsdp"], runs["plain"]))
print(f"max per-step loss gap FSDP vs plain: {gap:.2e}")
PY

# 2. Throughput against sentence-transformers' trainer, same GPU, same shape, bf16.
python3 benchmarks/train_throughput.py --model "$MODEL" --batch "$BATCH" --max-length "$LENGTH" \
    --trainers st-bf16 ours-bf16 ours-packed-bf16 "${THROUGHPUT[@]}" --memory-batches \
    --report "$OUT/train_throughput.json" 2>&1 | tail -n 25 | tee "$OUT/train_throughput.txt"
