#!/bin/bash
# The final, quiet pass: every target again, one after the other, nothing else running; each
# reuses its trained runs (teacher and student) and re-exports, re-scores and re-times them.
# Runs the code that trained them (the frozen worktree /work/runcode2).
cd /work/runcode2
export PYTHONPATH=/work/runcode2 JAX_COMPILATION_CACHE_DIR=/work/main/runs/xla_cache
for spec in "sst2 SST-2 1.5" "sst2 SST-2 2" "sst2 SST-2 3" "sst2 SST-2 4" "sst2 SST-2 6" "cola CoLA 2" "cola CoLA 3"; do
  set -- $spec
  start=$(date +%s); load=$(cut -d' ' -f1 /proc/loadavg)
  python -m mvp_jax.cli compress --config configs/lab/$1/hybrid_distilled.yaml \
    --set task.data_dir=../shared/data/glue/$2 --speedup $3 --work-dir /work/main/runs/compress \
    --output-dir /work/main/runs/compress/out-$1-${3}x --overwrite --no-progress \
    > /work/main/runs/compress/logs/verify-$1-${3}x.log 2>&1
  echo "verify $1 ${3}x rc $? wall $(( $(date +%s) - start )) load_start $load load_end $(cut -d' ' -f1 /proc/loadavg)" >> /work/main/runs/compress/verify_times.log
done
