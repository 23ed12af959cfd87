"""`python -m agents.delta_iris train|eval [overrides]` (see agents/delta_iris/agent.py)."""

from agents.delta_iris.agent import evaluate, train
from rl_core.cli import run_cli

if __name__ == "__main__":
    run_cli({"train": train, "eval": evaluate}, config_name="delta_iris")
