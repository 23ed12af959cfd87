"""Hydra config package: YAML groups env/, agent/, experiment/ and one primary config per agent."""
