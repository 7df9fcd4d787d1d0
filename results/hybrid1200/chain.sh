#!/bin/bash
# Issue 23's runs: dense (teacher and reference) then hybrid movement distilled from it, 1200 updates.
cd /work/main/runs/hybrid1200
T=/work/main/runs/hybrid1200/dense/export
KD="--set distill.teacher=$T --set distill.alpha_ce=0.1 --set distill.alpha_distil=0.9 --set distill.temperature=2.0"
H=/work/main/configs/lab/sst2/hybrid.yaml
(
  ./run.sh 1 dense --config /work/main/configs/lab/sst2/dense.yaml
  ./run.sh 1 hybrid_kd_k0.5 --config $H --set prune.final_threshold=0.5 $KD
  ./run.sh 1 hybrid_kd_k0.2 --config $H --set prune.final_threshold=0.2 $KD
) &
(
  while [ ! -f $T/config.json ] || [ ! -f dense/eval_results.json ]; do sleep 30; done
  ./run.sh 0 hybrid_kd_k0.3 --config $H --set prune.final_threshold=0.3 $KD
) &
wait
