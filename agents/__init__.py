"""Agents: one module per agent, each runnable as `python -m agents.NAME CMD overrides...`."""
