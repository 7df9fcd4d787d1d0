#!/bin/bash
# usage: run.sh CORE NAME ARGS...  one fine-prune pinned to one core, from the frozen worktree
core=$1; name=$2; shift 2
cd /work/runcode
export PYTHONPATH=/work/runcode
export JAX_COMPILATION_CACHE_DIR=/work/main/runs/paper_grid/xla_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
start=$(date +%s)
taskset -c $core python -m mvp_jax.cli fine-prune --output-dir /work/main/runs/hybrid1200/$name \
  --set task.data_dir=/work/shared/data/glue/SST-2 "$@" > /work/main/runs/hybrid1200/logs/$name.log 2>&1
rc=$?
echo "$name rc $rc wall $(( $(date +%s) - start ))" >> /work/main/runs/hybrid1200/wall_times.log
exit $rc
