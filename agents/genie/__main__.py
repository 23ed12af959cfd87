"""`python -m agents.genie collect|train|eval|play [overrides]` (see agents/genie/agent.py)."""

from agents.genie.agent import collect, evaluate, play, train
from rl_core.cli import run_cli

if __name__ == "__main__":
    run_cli(
        {"train": train, "collect": collect, "eval": evaluate, "play": play}, config_name="genie"
    )
