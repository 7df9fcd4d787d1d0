#!/bin/bash
# the layer-wise distillation run at the 3x budget, on core 0 once the CoLA chain has finished
cd /work/runcode3
export PYTHONPATH=/work/runcode3 JAX_COMPILATION_CACHE_DIR=/work/main/runs/xla_cache
while pgrep -f "chain.sh 0 0 cola" > /dev/null; do sleep 20; done
start=$(date +%s)
taskset -c 0 python -m mvp_jax.cli fine-prune --config /work/main/runs/compress/layerwise-sst2-3x.yaml \
  --output-dir /work/main/runs/compress/layerwise-sst2-keep0.3252 --no-progress \
  > /work/main/runs/compress/logs/layerwise-sst2-3x.log 2>&1
echo "layerwise 3x rc $? wall $(( $(date +%s) - start ))" >> /work/main/runs/compress/wall_times.log
