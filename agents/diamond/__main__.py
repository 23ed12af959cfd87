"""`python -m agents.diamond train|eval|render [overrides]` (see agents/diamond/agent.py)."""

from agents.diamond.agent import evaluate, render, train
from rl_core.cli import run_cli

if __name__ == "__main__":
    run_cli({"train": train, "eval": evaluate, "render": render}, config_name="diamond")
