"""`python -m agents.delta_iris train|eval|render [overrides]` (see agents/delta_iris/agent.py)."""

from agents.delta_iris.agent import evaluate, render, train
from rl_core.cli import run_cli

if __name__ == "__main__":
    run_cli({"train": train, "eval": evaluate, "render": render}, config_name="delta_iris")
