"""Hydra configs visible only to the agents whose primary config adds this folder to its searchpath."""
