#!/bin/bash
# usage: chain.sh CORE WAIT_PID TASK TARGET...  compress runs pinned to one core, from the frozen
# worktree /work/runcode2, one after the other (each run's log in runs/compress/logs)
core=$1; wait_pid=$2; task=$3; shift 3
cd /work/runcode2
export PYTHONPATH=/work/runcode2 JAX_COMPILATION_CACHE_DIR=/work/main/runs/xla_cache
while [ "$wait_pid" != 0 ] && kill -0 $wait_pid 2>/dev/null; do sleep 20; done
case $task in sst2) data=SST-2;; cola) data=CoLA;; esac
for target in "$@"; do
  start=$(date +%s)
  taskset -c $core python -m mvp_jax.cli compress --config configs/lab/$task/hybrid_distilled.yaml \
    --set task.data_dir=../shared/data/glue/$data --speedup $target --work-dir /work/main/runs/compress \
    --output-dir /work/main/runs/compress/out-$task-${target}x --overwrite --no-progress \
    > /work/main/runs/compress/logs/$task-${target}x.log 2>&1
  echo "$task ${target}x rc $? wall $(( $(date +%s) - start ))" >> /work/main/runs/compress/wall_times.log
done
