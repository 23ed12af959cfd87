"""Genie (Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391; no
official code): a spatio-temporal video tokenizer, a latent action model learned from video
alone and a MaskGIT dynamics model over tokens and latent actions, playable from one frame.
Work in progress (issue 8): the model pieces live here, the CLI comes next."""
