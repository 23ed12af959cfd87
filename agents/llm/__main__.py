"""``python -m agents.llm eval|sweep [overrides]`` (see agents/llm/README.md)."""

from __future__ import annotations

from agents.llm.evaluate import evaluate, sweep
from rl_core.cli import run_cli

if __name__ == "__main__":
    run_cli({"eval": evaluate, "sweep": sweep}, config_name="llm")
