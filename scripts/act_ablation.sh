#!/usr/bin/env bash
# ACT's ablation (results/act): chunk size k x execution (open_loop/replan/ensemble) x demos (clean/noisy) x seeds.
# Every `train` run evaluates all three execution modes (50 rollouts each) and upserts its rows into
# $RESULTS/act/ablation.csv; demonstrations are collected once per demo set and cached in $DATA.
#
#   scripts/act_ablation.sh                       # transfer-cube, state observations (the committed table)
#   ENV=point_reach SEEDS="0 1 2" scripts/act_ablation.sh   # the same grid on the 2-D task
#
# One run at a time on one thread (OMP_NUM_THREADS=1). Wall time per run is appended to $LOG.
set -euo pipefail
cd "$(dirname "$0")/.."

ENV=${ENV:-aloha_transfer_cube_state}
CHUNKS=${CHUNKS:-"1 10 50 100"}
SEEDS=${SEEDS:-"0 1 2"}
DEMOS=${DEMOS:-"clean noisy"}
RESULTS=${RESULTS:-results}
DATA=${DATA:-data}
RUNS=${RUNS:-runs/act_ablation}
LOG=${LOG:-$RESULTS/act/ablation_log.txt}
EXTRA=${EXTRA:-}   # more Hydra overrides for every run

# noisy = human-like: jitter on every command, hesitations (5-15 steps) with 2% chance per step and 50% at waypoints
# jitter std: metres of end-effector for aloha, arena units for point_reach
case "$ENV" in point_reach*) NOISY_JITTER=${NOISY_JITTER:-0.01} ;; *) NOISY_JITTER=${NOISY_JITTER:-0.005} ;; esac
demo_args() {
  case "$1" in
    clean) echo "demos.name=clean" ;;
    noisy) echo "demos.name=noisy demos.expert.jitter_std=$NOISY_JITTER demos.expert.pause_prob=0.02 demos.expert.waypoint_pause_prob=0.5" ;;
  esac
}

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LP_NUM_THREADS=1
mkdir -p "$(dirname "$LOG")"
start_all=$(date +%s)
for demos in $DEMOS; do
  # shellcheck disable=SC2046
  python -m agents.act collect env="$ENV" $(demo_args "$demos") data_dir="$DATA" train.progress=false \
    logger.mode=disabled $EXTRA 2>&1 | grep -E "scripted expert|demonstrations" | tee -a "$LOG"
  for k in $CHUNKS; do
    for seed in $SEEDS; do
      name="${ENV}__act_${demos}_k${k}__${seed}"
      t0=$(date +%s)
      # shellcheck disable=SC2046
      python -m agents.act train env="$ENV" $(demo_args "$demos") agent.chunk_size="$k" seed="$seed" \
        run_name="$name" run_dir="$RUNS/$name" data_dir="$DATA" results_dir="$RESULTS" \
        logger.mode=disabled train.progress=false $EXTRA > "/tmp/${name}.log" 2>&1 \
        || { echo "FAILED $name (see /tmp/${name}.log)" | tee -a "$LOG"; exit 1; }
      echo "$name $(( $(date +%s) - t0 ))s $(tail -n 1 "$RUNS/$name/metrics.jsonl" | grep -o '"eval/success_rate_[a-z_]*": [0-9.]*' | tr '\n' ' ')" | tee -a "$LOG"
    done
  done
done
echo "total $(( $(date +%s) - start_all ))s" | tee -a "$LOG"
