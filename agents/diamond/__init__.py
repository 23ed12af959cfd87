"""DIAMOND (Alonso, Jelley, Micheli, Kanervisto, Storkey, Pearce, Fleuret, "Diffusion for World
Modeling: Visual Details Matter in Atari", NeurIPS 2024, arXiv 2405.12399; official code
github.com/eloialonso/diamond): a world model that *samples the next frame* with an EDM
diffusion U-Net conditioned on the last 4 frames and actions (3 Euler denoising steps per
frame), a separate CNN-LSTM that predicts the reward sign and termination of each imagined
transition, and the shared CNN-LSTM actor-critic (`rl_core.actor_critic`) trained by REINFORCE
with λ-returns inside that imagination. Pieces: `denoiser.DiamondDenoiser` (with the shared EDM
building blocks of `rl_core.nn.edm`), `reward_end.RewardEndModel`, `imagination.
DiamondImagination` (the models as a batched environment) and `evaluation` (held-out metrics
against trivial baselines); the agent module's docstring lists every deviation from the
official code (in the docstrings of each module)."""
