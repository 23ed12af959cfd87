"""Genie's dynamics model: a decoder-only MaskGIT ST-transformer over frame tokens and latent
actions that predicts the next frame's tokens.

Paper: Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391, §2.1
and App. F (no official code). Given tokens z_{0:t-1} and stop-grad latent actions, the model
predicts z_t. Training masks the frames' tokens with Bernoulli(r), r ~ U(0.5, 1) per sequence,
and scores cross-entropy on the masked tokens only; inference appends a fully masked frame and
fills it by MaskGIT iterative decoding (25 steps; temperature 2 for the 11B model, 1.0 in the
CoinRun case study). Latent actions are additive embeddings (the paper found them more
controllable than concatenation). The pieces are `rl_core.nn.st_transformer` (causal in time)
and `rl_core.nn.maskgit`.

Alignment (the off-by-one pitfall, reference §5.5): transition j (frame j -> frame j+1) has
latent action a_j = actions[:, j]. a_j is ADDED TO EVERY TOKEN OF FRAME j+1, the frame it
explains; frame 0 gets a learned "no action" embedding. Why frame j+1 and not frame j: with the
causal temporal mask, a_j on frame j+1 reaches the predictions of frames >= j+1 only, so
(1) the prediction of frame j+1 sees a_j directly in its own (mostly masked) tokens, and (2) the
reconstruction of masked tokens of frame j cannot read a_j, which the latent action model
inferred from frames j AND j+1 and could leak frame-j content through. Putting a_j on frame j
would give frame j+1 the same information, one attention hop further, but break (2). The tests
enforce: logits of frame j+1 change with a_j; logits of frames <= j do not.

`action_mode="token"` (jasmine, reference §4.2: needed for faithful CoinRun rollouts) prepends
the action instead, as one extra token per frame (index 0, the same a_j -> frame j+1 rule), so
spatial attention mixes it into the frame rather than a fixed offset on every token; its output
is dropped before the head.

Sizes: defaults are CPU smoke sizes (reference §6.5: 2 ST blocks, d 128, 64 tokens per frame,
vocab 256, 8 actions, T <= 16, 8 MaskGIT steps, temperature 1). The CoinRun case study (App. F):
    vocab 1024 (tokenizer codebook), 64x64 frames at patch 4 -> 256 tokens per frame,
    num_actions 6, n_layer 12, d_model 512, n_head 8, max_frames 16, mask U(0.5, 1),
    maskgit_steps 25, temperature 1.0; batch 36 x 16 frames, 200k steps, AdamW lr 3e-5 with
    5k warm-up, beta2 0.9 (the 11B model: 48 layers, d 5120, 36 heads, temperature 2).

Deviations and choices the paper leaves open:
- Frame 0 of every clip is never masked (the context a rollout starts from; the reference
  reads the paper as masking z_{2:T-1}); frames 1..T-1 are masked at one rate per sequence.
  Frames after the last real transition (`mask` False) are not scored.
- Latent actions arrive as integer codes with an embedding table learned here (stop-grad is
  implicit: nothing flows back into the latent action model).
- Context windows: a rollout keeps the last `max_frames - 1` frames before the frame it decodes.
  The first frame of any window gets the "no action" embedding, as frame 0 does in training,
  so a sliding window looks like a training clip.
- `predict_next` / `rollout` need the actions between the context frames (`past_actions`,
  `context_actions`) whenever the context has more than one frame: the model was trained with
  them on every frame, and silently zeroing them would be an input it never saw.
- Each MaskGIT step re-runs the whole context (no KV cache): fine at smoke sizes.

Shape legend: b batch, t frames, n tokens per frame, d width, V vocab, k rollout length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rl_core.nn.maskgit import masked_token_loss, maskgit_decode, sample_training_mask
from rl_core.nn.st_transformer import STConfig, STTransformer, st_config_like


@dataclass
class DynamicsConfig:
    vocab_size: int = 256  # tokenizer codebook size (CoinRun: 1024)
    tokens_per_frame: int = 64  # n (CoinRun: 256)
    num_actions: int = 8  # latent action codebook size (CoinRun: 6)
    d_model: int = 128  # CoinRun: 512
    n_layer: int = 2  # CoinRun: 12
    n_head: int = 4  # CoinRun: 8
    ffn_mult: int = 4
    dropout: float = 0.0
    max_frames: int = 16  # longest clip / context + decoded frame (Genie: 16)
    mask_low: float = 0.5  # training mask rate r ~ U(mask_low, mask_high)
    mask_high: float = 1.0
    maskgit_steps: int = 8  # Genie: 25
    temperature: float = 1.0  # sampling temperature (Genie 11B: 2, CoinRun: 1.0; 0 = argmax)
    action_mode: str = "additive"  # additive (Genie) | token (jasmine: prepended action token)
    qk_norm: bool = False
    pos: str = "learned"

    def __post_init__(self) -> None:
        if self.action_mode not in ("additive", "token"):
            raise ValueError(f"action_mode={self.action_mode!r}: expected additive or token")
        if self.max_frames < 2:
            raise ValueError(f"max_frames={self.max_frames}: need a context and a next frame")

    def st_config(self) -> STConfig:
        extra = 1 if self.action_mode == "token" else 0
        return st_config_like(self, max_tokens_per_frame=self.tokens_per_frame + extra, causal=True)


class DynamicsModel(nn.Module):
    """MaskGIT ST-transformer: (tokens (b, t, n), actions (b, t-1), mask) -> logits (b, t, n, V)."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab_size  # the extra embedding row for "unknown token"
        self.null_action = cfg.num_actions  # the extra row for frame 0 / a window's first frame
        self.token_emb = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)
        self.action_emb = nn.Embedding(cfg.num_actions + 1, cfg.d_model)
        for emb in (self.token_emb, self.action_emb):
            nn.init.normal_(emb.weight, std=0.02)
        self.transformer = STTransformer(cfg.st_config())
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits (b, t, n, V) for every token; `mask` (b, t, n) True = replaced by the mask
        embedding; actions[:, j] (transition j -> j+1) conditions frame j+1 (module docstring)."""
        b, t, n = tokens.shape
        if actions.shape != (b, t - 1):
            raise ValueError(f"actions {tuple(actions.shape)} must be (b, t-1) = {(b, t - 1)}")
        if n != self.cfg.tokens_per_frame:
            raise ValueError(f"frames have {n} tokens, config says {self.cfg.tokens_per_frame}")
        ids = tokens.long() if mask is None else torch.where(mask.bool(), self.mask_id, tokens)
        x = self.token_emb(ids)  # (b t n d)
        null = torch.full((b, 1), self.null_action, dtype=torch.long, device=tokens.device)
        frame_actions = torch.cat([null, actions.long()], dim=1)  # (b t): a_{j-1} on frame j
        act = self.action_emb(frame_actions)[:, :, None, :]  # (b t 1 d)
        if self.cfg.action_mode == "additive":
            return self.head(self.transformer(x + act))
        h = self.transformer(torch.cat([act, x], dim=2))  # action token first in each frame
        return self.head(h[:, :, 1:])

    def compute_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """MaskGIT loss on a clip batch: tokens (b, T, n) long, actions (b, T-1) long, optional
        mask (b, T-1) bool (True: a real transition, so frame j+1 is a real target).

        Frame 0 stays visible; frames 1..T-1 are masked at one rate ~ U(mask_low, mask_high) per
        sequence. Metrics add `copy_acc`: accuracy of copying the previous frame's token at the
        same masked positions (the baseline a useful model must beat).
        """
        tokens, actions = batch["tokens"].long(), batch["actions"].long()
        b, t, n = tokens.shape
        if t < 2:
            raise ValueError(f"clips of {t} frames have no transition to predict")
        device = tokens.device if generator is None else generator.device
        future = sample_training_mask(
            (b, t - 1, n), generator, self.cfg.mask_low, self.cfg.mask_high, device
        ).to(tokens.device)
        keep = torch.zeros(b, 1, n, dtype=torch.bool, device=tokens.device)
        token_mask = torch.cat([keep, future], dim=1)  # (b T n), frame 0 never masked
        real = batch.get("mask")
        real_frames = torch.ones(b, t, dtype=torch.bool, device=tokens.device)
        if real is not None:
            real_frames[:, 1:] = real.bool().to(tokens.device)
        loss_mask = token_mask & real_frames[:, :, None]
        logits = self(tokens, actions, token_mask)
        loss, metrics = masked_token_loss(logits, tokens, loss_mask)
        target = loss_mask[:, 1:]
        copy_hits = tokens[:, 1:][target] == tokens[:, :-1][target]
        metrics["copy_acc"] = float(copy_hits.float().mean()) if copy_hits.numel() else 0.0
        return loss, metrics

    @torch.no_grad()
    def predict_next(
        self,
        tokens_past: Tensor,
        action: Tensor,
        past_actions: Tensor | None = None,
        steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Tokens (b, n) of the frame after `tokens_past (b, t, n)` under `action (b,)`.

        `past_actions (b, t-1)`: the transitions between the past frames (required for t > 1).
        Keeps the last max_frames - 1 past frames, appends a fully masked frame and fills it by
        MaskGIT decoding (`steps`, `temperature` default to the config; temperature 0 = argmax).
        """
        b, t, n = tokens_past.shape
        if past_actions is None:
            if t > 1:
                raise ValueError(f"a context of {t} frames needs past_actions (b, {t - 1})")
            past_actions = tokens_past.new_zeros(b, 0)
        keep = self.cfg.max_frames - 1
        if t > keep:  # sliding window; its first frame's action is dropped (module docstring)
            tokens_past, past_actions = _last(tokens_past, keep), _last(past_actions, keep - 1)
        all_actions = torch.cat([past_actions.long(), action.long().view(b, 1)], dim=1)
        past = tokens_past.long()
        known = torch.zeros_like(past, dtype=torch.bool)

        def logits_fn(frame: Tensor, frame_mask: Tensor) -> Tensor:
            toks = torch.cat([past, frame[:, None]], dim=1)
            mask = torch.cat([known, frame_mask[:, None]], dim=1)
            return self(toks, all_actions, mask)[:, -1]

        start = torch.full((b, n), self.mask_id, dtype=torch.long, device=past.device)
        unknown = torch.ones(b, n, dtype=torch.bool, device=past.device)
        return maskgit_decode(
            logits_fn,
            start,
            unknown,
            steps=steps or self.cfg.maskgit_steps,
            temperature=self.cfg.temperature if temperature is None else temperature,
            generator=generator,
        )

    @torch.no_grad()
    def rollout(
        self,
        tokens_context: Tensor,
        actions: Tensor,
        context_actions: Tensor | None = None,
        steps: int | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """k frames (b, k, n) decoded one after another from `tokens_context (b, t, n)` under
        `actions (b, k)`; `context_actions (b, t-1)` are the context's own transitions (required
        for t > 1). Each decoded frame joins the context (at most max_frames - 1 kept)."""
        b, t, n = tokens_context.shape
        if context_actions is None:
            if t > 1:
                raise ValueError(f"a context of {t} frames needs context_actions (b, {t - 1})")
            context_actions = tokens_context.new_zeros(b, 0)
        frames, acts = tokens_context.long(), context_actions.long()
        out = []
        for i in range(actions.shape[1]):
            nxt = self.predict_next(frames, actions[:, i], acts, steps, temperature, generator)
            out.append(nxt)
            frames = _last(torch.cat([frames, nxt[:, None]], dim=1), self.cfg.max_frames - 1)
            acts = _last(
                torch.cat([acts, actions[:, i : i + 1].long()], dim=1), frames.shape[1] - 1
            )
        return torch.stack(out, dim=1)


def _last(x: Tensor, m: int) -> Tensor:
    """The last `m` entries along dim 1 (m = 0 gives an empty slice, unlike x[:, -0:])."""
    return x[:, x.shape[1] - m :]


__all__ = ["DynamicsConfig", "DynamicsModel"]
