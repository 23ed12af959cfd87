#!/usr/bin/env bash
# Δ-IRIS and DIAMOND at the paper's sizes (experiment=atari100k, 64x64 Breakout) with the schedule
# shortened to 3 epochs of N steps per component: does the whole GPU path run end to end?
# Run from the repository root on a GPU machine; logs in $LOGS (default runs/gpu_check).
# Not results: the metrics after 3xN steps are printed, and written under /tmp/gpu_check_results.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-30}
LOGS=${LOGS:-runs/gpu_check}
mkdir -p "$LOGS"
SHORT=(agent.loop.epochs=3 agent.loop.progress=false agent.loop.collect.first_steps=500
  agent.loop.collect.steps_per_epoch=100 agent.loop.collect.last_epoch=null agent.loop.eval.every=3
  agent.loop.eval.episodes=2 agent.loop.eval.envs=2 agent.heldout.steps=300
  results_dir=/tmp/gpu_check_results logger.mode=disabled)
DELTA_IRIS=(agent.training.tokenizer.start_epoch=1 agent.training.world_model.start_epoch=1
  agent.training.actor_critic.start_epoch=2)
DIAMOND=(agent.training.actor_critic.start_epoch=2 agent.heldout.rollout_steps=50)
for part in tokenizer world_model actor_critic; do
  DELTA_IRIS+=("agent.training.$part.steps_first=$N" "agent.training.$part.steps_per_epoch=$N")
done
for part in denoiser reward_end actor_critic; do
  DIAMOND+=("agent.training.$part.steps_first=$N" "agent.training.$part.steps_per_epoch=$N")
done
run() {  # name, args...: time one agent's run, its log in $LOGS/name.log
  local name=$1 start=$SECONDS; shift
  python -m "agents.$name" train env=atari game=Breakout experiment=atari100k \
    run_dir="runs/gpu_check_$name" "${SHORT[@]}" "$@" >"$LOGS/$name.log" 2>&1
  echo "$name rc=$? wall_s=$((SECONDS - start))" | tee -a "$LOGS/$name.log"
}
run delta_iris "${DELTA_IRIS[@]}" &
run diamond "${DIAMOND[@]}" &
wait
