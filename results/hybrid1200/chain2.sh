#!/bin/bash
# after hybrid_kd_k0.3 (core 0): hybrid movement at 50% without distillation, for the comparison
cd /work/main/runs/hybrid1200
while [ ! -f hybrid_kd_k0.3/eval_results.json ]; do sleep 20; done
./run.sh 0 hybrid_k0.5 --config /work/main/configs/lab/sst2/hybrid.yaml --set prune.final_threshold=0.5
