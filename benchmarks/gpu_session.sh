#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md on an H100/H200: step time, memory and MFU of dense and pruned
# BERT-base and MiniLM steps, and kth_largest against jnp.sort. Results go to $OUT (device.txt,
# log.txt and JSON files). One part per device call, each meant to end inside the 10-minute
# limit (every variant compiles its own step):
#
#   device run: command="bash benchmarks/gpu_session.sh bert-base", timeout_s=600
#   device run: command="bash benchmarks/gpu_session.sh minilm", timeout_s=600
#   device run: command="bash benchmarks/gpu_session.sh threshold", timeout_s=600
#
# It uses the GPU image's own jax/flax/optax/transformers: the benchmarks read no dataset and no
# checkpoint (random weights of the models' shapes), so no wheels need to travel. Not yet run on
# a GPU (no session has been lent one). QUICK=1 shrinks every run: a smoke test on any machine.
set -uo pipefail
part=${1:-all}
case "$part" in all|bert-base|minilm|threshold) ;; *) echo "unknown part '$part': all, bert-base, minilm or threshold" >&2; exit 2;; esac
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ "${QUICK:-0}" = 1 ]; then steps=1; seqs="16"; batch=2; repeats=1; else steps=30; seqs="128 384"; batch=32; repeats=5; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1; } > "$OUT/device.txt"
cat "$OUT/device.txt"
touch "$OUT/log.txt"
if [ "$part" = all ] || [ "$part" = bert-base ]; then
  # shellcheck disable=SC2086  # $seqs is a list
  $PY benchmarks/step_time.py --models bert-base --seq-lens $seqs --batch-size $batch \
      --steps $steps --variants dense topk topk-global topk-global-f25 \
      --json "$OUT/step_bert_base.json" 2>&1 | tee -a "$OUT/log.txt"
fi
if [ "$part" = all ] || [ "$part" = minilm ]; then
  # shellcheck disable=SC2086
  $PY benchmarks/step_time.py --models minilm-l6 --seq-lens $seqs --batch-size $batch \
      --steps $steps --json "$OUT/step_minilm.json" 2>&1 | tee -a "$OUT/log.txt"
fi
if [ "$part" = all ] || [ "$part" = threshold ]; then
  $PY benchmarks/threshold.py --repeats $repeats --json "$OUT/threshold.json" 2>&1 | tee -a "$OUT/log.txt"
fi
