"""Δ-IRIS imagination: the tokenizer + world model as a batched environment of pixel frames.

Why pixels every step (official `src/envs/world_model_env.py`): the actor-critic is a CNN-LSTM
on frames, and the next I-token is computed from the decoded frame, so each imagined step is
  feed [I(x̂_t), a_t] -> sample reward class and termination from the a_t position -> sample the
  k Δ-tokens one by one (each fed back through the KV cache) -> decode x̂_{t+1} from
  (x̂_t, a_t, tokens) with the tokenizer decoder, clamped to [0, 1] and rounded to 8-bit levels.
The last Δ-token of a step is fed at the start of the next step, before [I(x̂_{t+1}), a_{t+1}].
Sampling is at temperature 1 (the official Atari setting; reward = sampled class - 1).

Everything runs under no_grad on the models' device and does not depend on train/eval mode (the
tokenizer quantises with a frozen codebook, the transformer has no dropout). Unlike the official
environment, which silently empties its KV cache when full, exceeding `max_blocks` (burn-in +
steps) raises a ValueError.

Shape legend: b batch, t burn-in transitions, k Δ-tokens per step, c h w a frame, d width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agents.delta_iris.tokenizer import Tokenizer, as_float_frames
from agents.delta_iris.world_model import WorldModel
from rl_core.nn.gpt import KVCache
from rl_core.nn.sampling import sample_logits


class DeltaIrisImagination:
    """`reset(frames, actions) -> frame`, `step(action) -> (next_frame, reward, end)`.

    Not an `nn.Module`: it borrows the tokenizer and the world model (owned, trained and saved
    by the agent) and keeps only the imagination state (current frame, KV cache).
    """

    def __init__(self, tokenizer: Tokenizer, world_model: WorldModel) -> None:
        if tokenizer.cfg.num_tokens != world_model.cfg.num_tokens:
            raise ValueError(
                f"tokenizer num_tokens={tokenizer.cfg.num_tokens} != world model "
                f"num_tokens={world_model.cfg.num_tokens}"
            )
        if tokenizer.cfg.codebook_size != world_model.cfg.codebook_size:
            raise ValueError(
                f"tokenizer codebook_size={tokenizer.cfg.codebook_size} != world model "
                f"codebook_size={world_model.cfg.codebook_size}"
            )
        self.tokenizer = tokenizer
        self.world_model = world_model
        self.temperature = 1.0
        self.frame: Tensor | None = None  # current frame (b c h w)
        self.cache: KVCache | None = None
        self.pending: Tensor | None = None  # last Δ-token embedding (b 1 d), fed next step
        self.blocks = 0  # time steps written (or being written) into the cache
        self.last_tokens: Tensor | None = None  # Δ-tokens (b k) sampled by the last step

    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    @property
    def max_blocks(self) -> int:
        return self.world_model.cfg.max_blocks

    @torch.no_grad()
    def reset(self, frames: Tensor, actions: Tensor) -> Tensor:
        """Burn in on real frames (b, t+1, c, h, w) and actions (b, t), t >= 0, all valid.

        Returns the current frame frames[:, -1] (b c h w) as float in [0, 1]."""
        frames = as_float_frames(frames.to(self.device))
        actions = actions.to(self.device).long()
        b, t = actions.shape
        if frames.shape[:2] != (b, t + 1):
            raise ValueError(
                f"frames {tuple(frames.shape)} must be (b, t+1, c, h, w) for actions (b, t) = "
                f"{(b, t)}"
            )
        if t > self.max_blocks:
            raise ValueError(f"burn-in of {t} transitions exceeds max_blocks={self.max_blocks}")
        self.cache = self.world_model.new_cache()
        self.pending = None
        self.last_tokens = None
        self.blocks = t
        if t > 0:
            batch = {"frames": frames, "action": actions}
            tokens = self.tokenizer.tokenize(batch)  # (b t k)
            self.world_model.transformer(
                self.world_model.sequence(frames[:, :-1], actions, tokens), cache=self.cache
            )
        self.frame = frames[:, -1]
        return self.frame

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """action (b,) long -> next frame (b c h w) in [0, 1], reward (b,) in {-1, 0, 1}, end (b,)."""
        if self.frame is None or self.cache is None:
            raise RuntimeError("call reset() before step()")
        if self.blocks + 1 > self.max_blocks:
            raise ValueError(
                f"burn-in + imagined steps would reach {self.blocks + 1} time steps, beyond the "
                f"world model's max_blocks={self.max_blocks}; shorten the burn-in or the horizon"
            )
        wm, temp = self.world_model, self.temperature
        action = action.to(self.device).long()
        x = wm.embed_frames(self.frame)[:, None]  # (b 1 d)
        a = wm.action_emb(action)[:, None]
        prefix = [x, a] if self.pending is None else [self.pending, x, a]
        h = wm.transformer(torch.cat(prefix, dim=1), cache=self.cache)[:, -1]  # at a_t
        reward = sample_logits(wm.head_rewards(h), temp).float() - 1.0
        end = sample_logits(wm.head_ends(h), temp).bool()
        tokens = [sample_logits(wm.head_latents(h), temp)]
        for _ in range(wm.cfg.num_tokens - 1):
            z = wm.latent_emb(tokens[-1])[:, None]
            h = wm.transformer(z, cache=self.cache)[:, -1]
            tokens.append(sample_logits(wm.head_latents(h), temp))
        self.pending = wm.latent_emb(tokens[-1])[:, None]
        self.blocks += 1
        self.last_tokens = torch.stack(tokens, dim=1)  # (b k)
        q = self.tokenizer.embed(self.last_tokens)  # (b k d)
        nxt = self.tokenizer.decode(self.frame, action, q)
        self.frame = nxt.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        return self.frame, reward, end
