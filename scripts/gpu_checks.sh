#!/usr/bin/env bash
# The real-scale checks on one GPU, in one run that fits a short lease (docs/benchmarks.md, "On a GPU"):
#   1. env            nvidia-smi, torch, the GPU
#   2. decoder_speed  per-prompt decode latency of SAM ViT-B (benchmarks/decoder_speed.py --device cuda); _64: 64
#                     prompts per call (the everything mode), to choose the GPU's decode path on both
#   3. predictor_devices  every Predictor task on the GPU against the CPU (scripts/predictor_devices.py), then
#      one_pass       merged model vs SAM + CLIP teachers at the paper's pairing (SAM ViT-B + CLIP ViT-L/14)
#   4. merge_cache    paper-scale stage-II steps (per-GPU batch of an 8-GPU run: 256 CLIP + 4 SAM images),
#                     teacher cache vs online teachers, peak GPU memory, the profile of one step (device and host
#                     tables); merge_cache_448: the CLIP images at 448 px
#   5. paper_merge    `torchrun -m samclip.cli merge --config sam-vit-b_clip-vit-l14`, all three stages for a few
#                     steps, on random teachers in the paper's architectures saved in our format (scene-world data)
#   6. tiny_merge     the embedded-default merge (`--config tiny-synthetic`) under torchrun on the GPU, in full;
#                     its model comes back (split in parts) to be evaluated on the CPU: `samclip eval --model DIR`
# Each step runs under its own time limit and inside the whole budget; outputs go to $WORK, packed at the end into
# $OUT/gpu_checks.tar.gz (plus the tiny model's parts), so that a step that fails or runs out of time costs only itself.
#
#   OUT=runs/gpu scripts/gpu_checks.sh [BUDGET_S]          # on the GPU machine (python3 holds torch with CUDA)
#   SMOKE=1 DEVICE=cpu PY=.venv/bin/python OUT=runs/gpu-smoke scripts/gpu_checks.sh   # wiring check on a CPU
#   STEPS="paper_merge" PAPER_BATCH="data.clip_batch=2 ..." ...: only the named steps, other batch overrides
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs/gpu-checks}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
BUDGET=${1:-540}
WORK=${WORK:-$(mktemp -d /tmp/gpu_checks.XXXXXX)}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"

ALL_STEPS="env decoder_speed decoder_speed_64 predictor_devices one_pass merge_cache merge_cache_448 paper_merge tiny_merge"
wanted() { [[ " ${STEPS:-$ALL_STEPS} " == *" $1 "* ]]; }

step() {  # step NAME LIMIT_S COMMAND...: output in $WORK/NAME.txt, its tail printed
  local name=$1 limit=$2 left rc t0
  shift 2
  wanted "$name" || return 0
  left=$((BUDGET - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "== $name: skipped (budget spent)" | tee "$WORK/$name.txt"
    return
  fi
  echo "== $name (limit ${limit} s, $(date +%T))"
  t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$WORK/$name.txt" 2>&1
  rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tr '\r' '\n' <"$WORK/$name.txt" | grep -v "it/s\]\|s/it\]\|img/s\]\|chunk/s\]\|^merge: \|^ *\[A\|^\s*$" | tail -n 40
}

if [ "$SMOKE" = 1 ]; then
  SAM_PRESET=sam-synthetic ONE_PASS=(--preset tiny-synthetic --reps 1 --latency-decodes 5)
  CACHE=(--steps 1) STEPS=${STEPS:-${ALL_STEPS/ merge_cache_448 paper_merge/}}  # the paper-scale steps need a GPU
  TINY=(--set stage1.steps=20 --set stage2.steps=4 --set stage3.steps=4 --set eval.every=0 --set data.clip_images=256
        --set data.sam_images=32 --set data.stage3_token_cache_images=256)
else
  SAM_PRESET=sam-vit-b ONE_PASS=(--preset paper --reps 10 --warmup 2)
  CACHE=(--preset paper --steps 3 --set data.clip_batch=256 --set data.sam_batch=4 --set data.clip_images=768
         --set data.sam_images=12)
  TINY=()
fi
PAPER_BATCH=${PAPER_BATCH:-"data.clip_batch=256 data.sam_batch=4 data.clip_images=1024 data.sam_images=16"}

step env 60 bash -c "nvidia-smi || true; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, \
torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))'; nproc; free -g"
step decoder_speed 90 "$PY" benchmarks/decoder_speed.py --preset "$SAM_PRESET" --device "$DEVICE"
step decoder_speed_64 90 "$PY" benchmarks/decoder_speed.py --preset "$SAM_PRESET" --device "$DEVICE" --prompts 64
step predictor_devices 120 "$PY" scripts/predictor_devices.py --device "$DEVICE"
step one_pass 150 "$PY" benchmarks/one_pass.py --device "$DEVICE" "${ONE_PASS[@]}"
step merge_cache 180 "$PY" benchmarks/merge_cache.py "${CACHE[@]}" --set "device=$DEVICE" --profile 25
step merge_cache_448 120 "$PY" benchmarks/merge_cache.py "${CACHE[@]}" --set "device=$DEVICE" \
  --set data.clip_sizes=448 --set data.clip_render_size=448

if wanted paper_merge; then
  # random teachers in the paper's architectures, saved in our format; the config overrides that use them
  mapfile -t TEACHER_SETS < <("$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); \
from merge_cache import paper_teachers; print('\n'.join(paper_teachers(Path('$WORK/paper_teachers'))))")
  SETS=()
  # shellcheck disable=SC2206  # PAPER_BATCH: space-separated KEY=VALUE overrides
  for s in "${TEACHER_SETS[@]}" $PAPER_BATCH \
    stage1.steps=4 stage1.warmup=1 stage2.steps=4 stage2.warmup=1 stage3.steps=2 stage3.warmup=1 checkpoint_every=4 \
    "device=$DEVICE" "out=$WORK/paper_merge"; do
    SETS+=(--set "$s")
  done
  step paper_merge 150 "$PY" -m torch.distributed.run --nproc_per_node 1 -m samclip.cli merge \
    --config sam-vit-b_clip-vit-l14 --no-eval "${SETS[@]}"
fi

step tiny_merge 400 "$PY" -m torch.distributed.run --nproc_per_node 1 -m samclip.cli merge --config tiny-synthetic \
  --set "out=$WORK/tiny_merge" --set "device=$DEVICE" "${TINY[@]}"

# pack what came out (no teacher caches, checkpoints or weights in the archive; the tiny model in <= 15 MB parts)
model=$WORK/tiny_merge/model
if [ -f "$model/model.safetensors" ]; then
  split -b 15M "$model/model.safetensors" "$OUT/tiny_merge_model.safetensors.part-"
  sha256sum "$model/model.safetensors" >"$WORK/tiny_merge_model.sha256"
fi
tar czf "$OUT/gpu_checks.tar.gz" -C "$WORK" --exclude='teacher_cache' --exclude='checkpoints' --exclude='*.safetensors' \
  --exclude='paper_teachers' --exclude='tb' . && echo "packed: $(ls "$OUT")"
echo "== done in $SECONDS s"
