"""Genie (Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391; no
official code): a spatio-temporal video tokenizer, a latent action model learned from video
alone and a MaskGIT dynamics model over tokens and latent actions, playable from one frame.
CLI: `python -m agents.genie collect|train|eval|play` (agents/genie/agent.py); issue 8 is in progress
(the CoinRun case-study sizes for a GPU and an Atari game come next)."""
