"""Shared neural-network blocks (reused by every agent, never copied)."""

from rl_core.nn.gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
