#!/usr/bin/env bash
# ChatFlow launcher: torchrun over NNODES x GPUS_PER_NODE ranks running `python -m chatflow.train`.
#
# Every setting is a named environment variable (no positional arguments); anything after the
# script name is passed through to the trainer and overrides what is set here, e.g.
#
#   NNODES=4 NODE_RANK=$SLURM_NODEID MASTER_ADDR=node001 \
#   DATA_SCHEDULE=examples/chatflow_schedule.yaml TOKENIZER_MODEL=/models/llama2/tokenizer.model \
#   CHECKPOINT_DIR=/ckpt/chatflow-7b LOAD=/ckpt/llama2-7b-mcore FINETUNE=1 \
#   bash examples/pretrain_chatflow.sh --wandb-project chatflow
#
# Default: the LLaMA2-7B ChatFlow recipe on one node of 8 x 80 GB GPUs (A100/H100):
#   layout     TP=1, PP=1, DP=8 (DP = world / (TP x PP)); distributed optimizer (ZeRO-1 style)
#   batches    micro-batch 1, global batch 512 samples = 1M tokens/step (64 accumulation steps
#              on 8 GPUs; 16 on 4 nodes), seq length 2048 (as in the paper)
#   optimizer  Adam(0.9, 0.95), weight decay 0.1, clip-grad 1.0, LR 1e-4 warmup over 256k samples
#              then cosine to 1e-5 over TRAIN_SAMPLES; bf16 weights with fp32 main weights/grads
#   run        6M samples (~12B tokens): the schedule's T_grow of 5M samples, then 1M at the
#              final mix
#   memory per GPU (7B = 6.74e9 params P, DP = 8):
#     bf16 weights 2P = 13.5 GB; fp32 grad buffer 4P = 27.0 GB;
#     fp32 main weights + Adam m, v sharded over DP: 12P / 8 = 10.1 GB        -> 50.6 GB states
#     activations, micro-batch 1, flash attention, no recomputation: per layer ~(16 h + 8 f) s
#       bytes = (16*4096 + 8*11008) * 2048 = 314 MB, x 32 layers = 10.1 GB
#     logits fp32 s x V x 4 B x ~3 copies = 0.8 GB; allocator/comm workspace ~3-5 GB
#     total ~65 GB of 80 GB. Micro-batch 2 (+10 GB) or 13B (TP=2) fit with
#     RECOMPUTE=selective; without the distributed optimizer the Adam states alone need 81 GB.
#
# CPU mode (the demo and tests): DEVICE=cpu uses gloo, NPROC ranks on this machine (default 2),
# the tiny model preset, fp32 and small batches.
set -euo pipefail

DEVICE=${DEVICE:-cuda}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-6000}

if [[ "$DEVICE" == cpu ]]; then
    GPUS_PER_NODE=${NPROC:-${GPUS_PER_NODE:-2}}
    MODEL=${MODEL:-tiny}
    TP=${TP:-1}; PP=${PP:-1}
    MICRO_BATCH=${MICRO_BATCH:-2}; GLOBAL_BATCH=${GLOBAL_BATCH:-8}
    SEQ_LEN=${SEQ_LEN:-128}; TRAIN_SAMPLES=${TRAIN_SAMPLES:-800}
    LR=${LR:-3e-3}; MIN_LR=${MIN_LR:-3e-4}; WARMUP_SAMPLES=${WARMUP_SAMPLES:-80}
    PRECISION=${PRECISION:-fp32}
    # Samples are memory-mapped and cheap to build: on 2 cores, loader processes only compete
    # with the ranks for CPU (measured: 0.2% of step time waiting with 0 workers, ~3% with 2).
    NUM_WORKERS=${NUM_WORKERS:-0}
    LOG_INTERVAL=${LOG_INTERVAL:-5}; SAVE_INTERVAL=${SAVE_INTERVAL:-50}
    EVAL_INTERVAL=${EVAL_INTERVAL:-50}; EVAL_ITERS=${EVAL_ITERS:-2}
    # Two ranks on two cores: one intra-op thread each avoids oversubscription.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export CUDA_VISIBLE_DEVICES=""  # CPU mode means CPU, even on a GPU node
else
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    MODEL=${MODEL:-7b}
    TP=${TP:-1}; PP=${PP:-1}
    MICRO_BATCH=${MICRO_BATCH:-1}; GLOBAL_BATCH=${GLOBAL_BATCH:-512}
    SEQ_LEN=${SEQ_LEN:-2048}; TRAIN_SAMPLES=${TRAIN_SAMPLES:-6000000}
    LR=${LR:-1e-4}; MIN_LR=${MIN_LR:-1e-5}; WARMUP_SAMPLES=${WARMUP_SAMPLES:-256000}
    PRECISION=${PRECISION:-bf16}
    NUM_WORKERS=${NUM_WORKERS:-2}
    LOG_INTERVAL=${LOG_INTERVAL:-10}; SAVE_INTERVAL=${SAVE_INTERVAL:-500}
    EVAL_INTERVAL=${EVAL_INTERVAL:-500}; EVAL_ITERS=${EVAL_ITERS:-10}
fi

DATA_SCHEDULE=${DATA_SCHEDULE:-examples/chatflow_schedule.yaml}
TOKENIZER_MODEL=${TOKENIZER_MODEL:?set TOKENIZER_MODEL to a LLaMA2 sentencepiece tokenizer.model}
CHECKPOINT_DIR=${CHECKPOINT_DIR:?set CHECKPOINT_DIR (where checkpoints and metrics.jsonl go)}
LOAD=${LOAD:-}  # e.g. a converted LLaMA2-7B checkpoint; unset: resume from CHECKPOINT_DIR if any
KEEP_LAST=${KEEP_LAST:-3}
SEED=${SEED:-1234}

args=(
    --device "$DEVICE"
    --model-preset "$MODEL"
    --tensor-model-parallel-size "$TP"
    --pipeline-model-parallel-size "$PP"
    --micro-batch-size "$MICRO_BATCH"
    --global-batch-size "$GLOBAL_BATCH"
    --seq-length "$SEQ_LEN"
    --train-samples "$TRAIN_SAMPLES"
    --lr "$LR" --min-lr "$MIN_LR" --lr-warmup-samples "$WARMUP_SAMPLES" --lr-decay-style cosine
    --weight-decay 0.1 --clip-grad 1.0
    --use-distributed-optimizer
    --data-schedule "$DATA_SCHEDULE"
    --tokenizer-model "$TOKENIZER_MODEL"
    --save "$CHECKPOINT_DIR"
    --save-interval "$SAVE_INTERVAL" --keep-last-checkpoints "$KEEP_LAST"
    --log-interval "$LOG_INTERVAL"
    --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
    --seed "$SEED"
    --num-workers "$NUM_WORKERS"
)
[[ -n "$LOAD" ]] && args+=(--load "$LOAD")
[[ "$PRECISION" == bf16 ]] && args+=(--bf16)
[[ -n "${FINETUNE:-}" ]] && args+=(--finetune)  # start from LOAD's weights: iteration 0
[[ -n "${VPP:-}" ]] && args+=(--num-virtual-stages-per-pipeline-rank "$VPP")
[[ -n "${RECOMPUTE:-}" ]] && args+=(--recompute-granularity "$RECOMPUTE")
[[ -n "${WANDB_PROJECT:-}" ]] && args+=(--wandb-project "$WANDB_PROJECT")
[[ -n "${DATA_CACHE:-}" ]] && args+=(--data-cache-path "$DATA_CACHE")

# Megatron's recommended setting for overlapping TP communication with compute on GPUs.
[[ "$DEVICE" != cpu ]] && export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}

exec torchrun \
    --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m chatflow.train "${args[@]}" "$@"
