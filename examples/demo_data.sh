#!/usr/bin/env bash
# ChatFlow data demo: train the sample tokenizer, then tokenize the four embedded corpora
# (Chinese text, English text, zh-en parallel pairs, instructions) into Megatron token shards.
#
# Usage: bash examples/demo_data.sh [OUT_DIR]      (default: demo_out; uses `python` from PATH)
# Outputs: OUT_DIR/tokenizer/chatflow_demo.model and, in OUT_DIR/shards/ (output prefix = corpus
#          file name, so names are <corpus>_<key or format>_document, as in
#          examples/chatflow_schedule_demo.yaml): zh_text_text_document, en_text_text_document,
#          parallel_parallel_document, instruct_instruction_document (+ _loss_mask), each .bin/.idx.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-demo_out}"
DATA="$ROOT/examples/data"
TOK="$OUT/tokenizer/chatflow_demo.model"
WORKERS="${WORKERS:-2}"
mkdir -p "$OUT/shards"

echo "== 1/5 train a LLaMA-style sentencepiece tokenizer on the sample corpus"
python "$ROOT/tools/train_tokenizer.py" --input "$DATA"/*.jsonl --vocab-size 4000 --output "$TOK"
if cmp -s "$TOK" "$ROOT/examples/tokenizer/chatflow_demo.model"; then
  echo "   identical to the shipped examples/tokenizer/chatflow_demo.model (training is deterministic)"
else
  echo "   note: differs from the shipped model (different sentencepiece version?)"
fi

run() {  # run <title> <args...>
  echo
  echo "== $1"
  shift
  python "$ROOT/tools/preprocess_data.py" --tokenizer-model "$TOK" --workers "$WORKERS" "$@"
}
S="$OUT/shards"
run "2/5 Chinese text"   --input "$DATA/zh_text.jsonl"  --output-prefix "$S/zh_text" --append-eod
run "3/5 English text"   --input "$DATA/en_text.jsonl"  --output-prefix "$S/en_text" --append-eod
run "4/5 parallel pairs" --input "$DATA/parallel.jsonl" --output-prefix "$S/parallel" \
  --format parallel --append-eod
run "5/5 instructions"   --input "$DATA/instruct.jsonl" --output-prefix "$S/instruct" \
  --format instruction

echo
echo "shards in $OUT/shards:"
ls -l "$OUT/shards"
