#!/usr/bin/env bash
# Every result in results/ at the full protocol (issue 13), in one go, on a quiet machine:
#
#     bash experiments/full_protocol.sh          # 58 min on 2 idle cores (results/logs/full_protocol.log); the ablation steps resume
#
# Nothing else may train or test on the machine meanwhile (torch's threads then wait on each other
# and runs slow down 2-150x). The code must be committed: every runs.csv row records the commit
# (python -m experiments.ablation refuses uncommitted code). Each step's output goes to results/logs/<step>.log,
# with its start, end and wall time in results/logs/full_protocol.log. TensorBoard runs land in runs/full/
# (not committed). The pages are rebuilt from the CSVs with `python -m experiments.results_pages`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
POOL=(--workers 2 --threads 1)  # two single-thread runs at once: the fastest use of 2 cores for these nets
GRID=(--seeds 5 --max-epochs 50 --patience 10)
mkdir -p results/logs

step() {  # step NAME COMMAND...: run one step, log it, time it
  local name=$1 start
  shift
  start=$(date +%s)
  echo "$(date -u +%FT%TZ) start $name: $*" | tee -a results/logs/full_protocol.log
  "$@" > "results/logs/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) done  $name: $(( $(date +%s) - start )) s" | tee -a results/logs/full_protocol.log
}

# 1. The recipe's ablation: 4 configs x 5 seeds x target {level, log_return} x horizon {1, 30}, with
#    persistence, drift and linear AR on the same windows (results/runs.csv).
step ablation $PY -m experiments.ablation --part ablation --configs baseline clipped orthogonal residual \
  --target-mode level log_return --horizon 1 30 "${GRID[@]}" "${POOL[@]}" --out results --runs-dir runs/full/ablation
# 2. The default forecaster (the classes' defaults, no config), same table.
step default $PY -m experiments.ablation --part ablation --configs default --target-mode log_return --horizon 1 30 \
  "${GRID[@]}" "${POOL[@]}" --out results --runs-dir runs/full/ablation
# 3. A second real series: the embedded silver column, default forecaster, h=1.
step silver $PY -m experiments.ablation --part ablation --configs default --target-mode log_return --horizon 1 \
  --set data.target=silver "${GRID[@]}" "${POOL[@]}" --out results/silver --runs-dir runs/full/silver
# 4. Depth / window sweep (plain vs residual x default vs orthogonal init; results/depth.csv).
step depth $PY -m experiments.ablation --part depth "${POOL[@]}" --out results --runs-dir runs/full/ablation
# 5. Walk-forward on the full series, 5 yearly folds (2008..2012), default forecaster, h=1 then h=30.
step backtest_h1 $PY -m lstm_grad.backtest --data.last_n_days null --folds 5 --test_days 250 "${POOL[@]}" \
  --output results
step backtest_h30 $PY -m lstm_grad.backtest --data.last_n_days null --data.horizon 30 --folds 5 --test_days 250 \
  "${POOL[@]}" --output results/backtest_h30
