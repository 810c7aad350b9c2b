#!/usr/bin/env bash
# The embedded ChatFlow demo (`make demo`): on a CPU machine in a few minutes,
#   1. trains the sample tokenizer and tokenizes the embedded corpus  (examples/demo_data.sh)
#   2. builds the ChatFlow schedule's blend/sample indices             (tools/build_index.py)
#   3. plots the schedule: target weights vs realized mix              (tools/plot_schedule.py)
#   4. trains a tiny LLaMA with 2 processes through the real launcher  (examples/pretrain_chatflow.sh)
#      printing per-source losses as they fall and the mix as it shifts, saving checkpoints
#   5. plots loss per source and the mix over steps                    (tools/plot_training.py)
#
# Settings (environment): OUT (default demo_out), SCHEDULE (examples/chatflow_schedule_demo.yaml), TRAIN_SAMPLES (default 640 = 80 steps of 8),
# SEQ_LEN (128), NPROC (2). Re-running resumes from demo_out/checkpoints if present; remove
# demo_out for a fresh run. Uses `python` from PATH (make demo puts the venv first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-demo_out}
SCHEDULE=${SCHEDULE:-examples/chatflow_schedule_demo.yaml}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-640}
SEQ_LEN=${SEQ_LEN:-128}
GLOBAL_BATCH=8
EVAL_ITERS=2
VALID_FRACTION=0.02  # = --split 98,2

fail() { echo "demo: $*" >&2; exit 1; }
need() {  # need <path> <what it is and who provides it>
    [[ -e "$1" ]] || fail "missing $1 ($2)"
}
need "$SCHEDULE" "the demo's schedule (SCHEDULE=...)"
command -v torchrun >/dev/null || fail "torchrun not on PATH (run through 'make demo' or activate .venv)"

echo "=== 1. tokenizer and token shards"
bash examples/demo_data.sh "$OUT" || fail "examples/demo_data.sh failed"
TOKENIZER="$OUT/tokenizer/chatflow_demo.model"
need "$TOKENIZER" "written by examples/demo_data.sh"
SHARDS="$(cd "$OUT/shards" && pwd)"

echo
echo "=== 2. ChatFlow schedule indices ($TRAIN_SAMPLES samples of $SEQ_LEN tokens)"
python tools/build_index.py --schedule "$SCHEDULE" --data-root "$SHARDS" \
    --seq-length "$SEQ_LEN" --num-samples "$TRAIN_SAMPLES" --cache-dir "$OUT/cache" \
    --valid-fraction "$VALID_FRACTION" --valid-samples $((EVAL_ITERS * GLOBAL_BATCH)) \
    || fail "tools/build_index.py failed"

echo
echo "=== 3. schedule plot"
python tools/plot_schedule.py "$SCHEDULE" --data-root "$SHARDS" --num-samples "$TRAIN_SAMPLES" \
    --output "$OUT/schedule.png" || fail "tools/plot_schedule.py failed"

echo
echo "=== 4. train the tiny LLaMA: 2 CPU processes (DP=2, distributed optimizer), gloo"
DEVICE=cpu NPROC=${NPROC:-2} MODEL=tiny \
    DATA_SCHEDULE="$SCHEDULE" TOKENIZER_MODEL="$TOKENIZER" CHECKPOINT_DIR="$OUT/checkpoints" \
    DATA_CACHE="$OUT/cache" SEQ_LEN="$SEQ_LEN" TRAIN_SAMPLES="$TRAIN_SAMPLES" \
    GLOBAL_BATCH="$GLOBAL_BATCH" MICRO_BATCH=2 EVAL_ITERS="$EVAL_ITERS" \
    LOG_INTERVAL=5 SAVE_INTERVAL=40 EVAL_INTERVAL=20 MASTER_PORT=${MASTER_PORT:-29517} \
    bash examples/pretrain_chatflow.sh --data-root "$SHARDS" --split 98,2 \
    || fail "training failed (see the log above)"

echo
echo "=== 5. training plot"
python tools/plot_training.py --metrics "$OUT/checkpoints/metrics.jsonl" \
    --output "$OUT/training.png" --title "ChatFlow demo: tiny LLaMA, 2 CPU processes" \
    || fail "tools/plot_training.py failed"

echo
echo "demo done:"
echo "  checkpoints     $OUT/checkpoints (latest: $(cat "$OUT/checkpoints/latest_checkpointed_iteration.txt"))"
echo "  metrics         $OUT/checkpoints/metrics.jsonl"
echo "  schedule plot   $OUT/schedule.png"
echo "  training plot   $OUT/training.png"
