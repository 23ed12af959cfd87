"""Return-Aligned Decision Transformer: make the achieved return follow the target return.

Paper: Tanaka et al. 2024/2025, "Return-Aligned Decision Transformer" (arXiv 2402.03923, TMLR);
official code github.com/CyberAgentAILab/radt (`gym/models/radt.py`). DT attends little to its
return-to-go tokens, so the achieved return drifts from the target. RADT removes the returns from
the main sequence and injects them twice:

- **SeqRA** (sequence-level): in every block, cross-attention from the state/action tokens to the
  return embeddings, step-causal (a token of step t sees returns of steps <= t); keys LN(c + e),
  values LN(c); output gated x <- (1 + α)·CA(x) + x with α = Linear([CA(x); x]) zero-initialised.
- **StepRA** (step-level): adaptive LayerNorm, LN(x)·(1 + scale) + shift with (scale, shift) from
  Linear(SiLU(c_t)) (zero-initialised), after SA, CA and MLP; the block is then post-norm.
  Without StepRA the block is pre-norm.

Main sequence: two tokens per step, (s_t + e_t) and (a_t + e_t) with e_t a timestep embedding;
c_t = Linear(R̂_t). Actions are predicted from the state tokens. `seqra`/`stepra` switch each part
off for the paper's ablations.

Evaluation (`align`): targets evenly spaced between the 5th and 95th percentile of the dataset's
episode returns, one episode per training task and target, metric mean |achieved − target|;
`python -m agents.dt align` evaluates DT the same way. Rows go to
`results/return_alignment/alignment.csv` (`env,agent,seed,target,achieved,abs_error`).

Deviations: discrete actions (cross-entropy, nucleus sampling top_p 0.5 at evaluation) because the
test bed is Dark-Room, where the achievable return is controllable (reach the goal later or
earlier); learned timestep embedding instead of the sinusoid+Linear; evaluation re-encodes the
last K steps every step (no KV cache: the returns change every step); CPU-sized defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange, repeat
from omegaconf import DictConfig
from torch import Tensor, nn

from agents import alignment, icl
from agents.dt import dt_loss
from rl_core.cli import run_cli
from rl_core.config import to_dataclass
from rl_core.data import DTWindowSampler
from rl_core.nn import (
    AdaLayerNorm,
    CrossAttention,
    GPTConfig,
    MultiDiscreteEmbedding,
    sample_logits,
    step_causal_mask,
)
from rl_core.nn.gpt import SelfAttention, causal_mask


@dataclass
class RADTConfig:
    name: str = "return_aligned_dt"
    seqra: bool = True  # step-causal cross-attention to the returns
    stepra: bool = True  # adaptive LayerNorm from the return embedding
    context_len: int = 20  # K steps (2K tokens)
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.1
    temperature: float = 1.0
    top_p: float = 0.5
    num_targets: int = 7  # evaluation targets between the 5th and 95th return percentile

    @property
    def label(self) -> str:
        """Name in result tables: the ablation it is."""
        if self.seqra and self.stepra:
            return "return_aligned_dt"
        if self.seqra or self.stepra:
            return "return_aligned_dt_" + ("seqra" if self.seqra else "stepra")
        return "return_aligned_dt_none"


class RABlock(nn.Module):
    """One block: SA, [SeqRA], MLP; post-norm with StepRA's adaptive norms, else pre-norm."""

    def __init__(self, cfg: RADTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        gpt_cfg = GPTConfig(d_model=d, n_head=cfg.n_head, dropout=cfg.dropout, pos="none")
        self.attn = SelfAttention(gpt_cfg)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(cfg.dropout)
        )
        if cfg.seqra:
            self.cross = CrossAttention(d, cfg.n_head, cfg.dropout)
            self.gate = nn.Linear(2 * d, d)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        norm = (lambda: AdaLayerNorm(d, d)) if cfg.stepra else (lambda: nn.LayerNorm(d))
        self.norms = nn.ModuleList([norm() for _ in range(3 if cfg.seqra else 2)])

    def _norm(self, i: int, x: Tensor, cond: Tensor) -> Tensor:
        return self.norms[i](x, cond) if self.cfg.stepra else self.norms[i](x)

    def _seqra(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        ca = self.cross(x, keys, mask, value_context=values)
        return (1 + self.gate(torch.cat([ca, x], dim=-1))) * ca

    def forward(self, x, cond, attn_mask, keys, values, ret_mask):
        if self.cfg.stepra:  # post-norm, each sub-layer followed by its modulated norm
            x = self._norm(0, x + self.attn(x, None, None, 0, attn_mask), cond)
            if self.cfg.seqra:
                x = self._norm(1, x + self._seqra(x, keys, values, ret_mask), cond)
            return self._norm(len(self.norms) - 1, x + self.mlp(x), cond)
        x = x + self.attn(self._norm(0, x, cond), None, None, 0, attn_mask)
        if self.cfg.seqra:
            x = x + self._seqra(self._norm(1, x, cond), keys, values, ret_mask)
        return x + self.mlp(self._norm(len(self.norms) - 1, x, cond))


class ReturnAlignedDT(nn.Module):
    """(s_t, a_t) tokens conditioned on returns -> action logits at state tokens."""

    def __init__(
        self, obs_sizes: Sequence[int], n_actions: int, horizon: int, cfg: RADTConfig
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg, self.horizon = cfg, horizon
        self.obs_emb = MultiDiscreteEmbedding(obs_sizes, d)
        self.action_emb = nn.Embedding(n_actions, d)
        self.time_emb = nn.Embedding(horizon, d)
        self.rtg_proj = nn.Linear(1, d)
        self.key_ln, self.value_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.blocks = nn.ModuleList([RABlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_actions)

    def forward(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        mask: Tensor,
        reward: Tensor | None = None,
    ) -> Tensor:
        """Left-padded windows (b n) -> logits (b n A), the same inputs as `DTModel` (`reward`
        is accepted for that reason and unused: rewards are not tokens here)."""
        t = self.time_emb(timestep.long())
        s = self.obs_emb(obs) + t
        a = self.action_emb(action.long()) + t
        x = rearrange([s, a], "two b n d -> b (n two) d")
        c = self.rtg_proj((rtg.float() / self.horizon).unsqueeze(-1))  # (b n d)
        keys, values = self.key_ln(c + t), self.value_ln(c)
        cond = repeat(c, "b n d -> b (n two) d", two=2)
        steps = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        token_steps = repeat(steps, "b n -> b (n two)", two=2)
        token_real = repeat(mask, "b n -> b (n two)", two=2)
        n = x.shape[1]
        attn = causal_mask(n, n, x.device) & token_real[:, None, None, :]
        attn = attn | torch.eye(n, dtype=torch.bool, device=x.device)  # padding sees itself
        ret_mask = step_causal_mask(token_steps, steps) & mask[:, None, :]
        for block in self.blocks:
            x = block(x, cond, attn, keys, values, ret_mask)
        return self.head(self.ln_f(x)[:, 0::2])


class WindowPolicy:
    """Acts by re-encoding the last K steps of each env's episode (fixed target per episode)."""

    def __init__(
        self, model: nn.Module, context_len: int, targets: np.ndarray, device: torch.device,
        seed: int, temperature: float = 1.0, top_p: float = 0.5,
    ) -> None:  # fmt: skip
        self.model, self.k, self.device = model, context_len, device
        self.targets = np.asarray(targets, dtype=np.float32)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.temperature, self.top_p = temperature, top_p

    def reset(self, n_envs: int) -> None:
        self.obs: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
        self.actions: list[list[int]] = [[] for _ in range(n_envs)]
        self.rtg = self.targets.copy()
        self.rtgs: list[list[float]] = [[] for _ in range(n_envs)]

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        n, k = len(obs), self.k
        for i in range(n):
            self.obs[i].append(np.asarray(obs[i]))
            self.rtgs[i].append(float(self.rtg[i]))
        length = min(len(self.obs[0]), k)
        start = len(self.obs[0]) - length
        pad = k - length
        o = np.zeros((n, k, *np.shape(obs[0])), dtype=np.int64)
        a = np.zeros((n, k), dtype=np.int64)
        r = np.zeros((n, k), dtype=np.float32)
        m = np.zeros((n, k), dtype=bool)
        for i in range(n):
            o[i, pad:] = self.obs[i][start:]
            a[i, pad : k - 1] = self.actions[i][start:]
            r[i, pad:] = self.rtgs[i][start:]
            m[i, pad:] = True
        timestep = np.clip(np.arange(start - pad, start + length), 0, None)[None].repeat(n, 0)
        to = lambda x: torch.as_tensor(x, device=self.device)  # noqa: E731
        logits = self.model(to(r), to(o), to(a), to(timestep), to(m))[:, -1]
        action = sample_logits(logits, self.temperature, self.generator, self.top_p)
        return action.cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        for i, act in enumerate(actions):
            self.actions[i].append(int(act))
        self.rtg = self.rtg - np.asarray(rewards, dtype=np.float32)


def build(cfg: DictConfig) -> tuple[ReturnAlignedDT, RADTConfig]:
    agent_cfg = to_dataclass(cfg.agent, RADTConfig, "agent")
    horizon = icl.darkroom_tasks(cfg.env).horizon
    torch.manual_seed(cfg.seed)
    model = ReturnAlignedDT((cfg.env.width, cfg.env.height), 5, horizon, agent_cfg)
    return model, agent_cfg


def make_align_policy(cfg: DictConfig, agent_cfg: RADTConfig):
    def factory(model: nn.Module, device: torch.device, targets: np.ndarray) -> WindowPolicy:
        return WindowPolicy(
            model, agent_cfg.context_len, targets, device, cfg.seed,
            agent_cfg.temperature, agent_cfg.top_p,
        )  # fmt: skip

    return factory


def train(cfg: DictConfig) -> nn.Module:
    model, agent_cfg = build(cfg)
    evaluate = alignment.make_evaluator(
        cfg, agent_cfg.label, make_align_policy(cfg, agent_cfg), agent_cfg.num_targets
    )
    sampler = lambda store: DTWindowSampler(store, agent_cfg.context_len)  # noqa: E731
    return icl.train_agent(cfg, model, dt_loss, sampler, evaluate)


def align(cfg: DictConfig) -> dict[str, float]:
    """Re-run the alignment evaluation of a trained run."""
    model, agent_cfg = build(cfg)
    evaluate = alignment.make_evaluator(
        cfg, agent_cfg.label, make_align_policy(cfg, agent_cfg), agent_cfg.num_targets
    )
    return icl.evaluate_agent(cfg, model, evaluate)


if __name__ == "__main__":
    run_cli(
        {"train": train, "align": align, "collect": icl.collect}, config_name="return_aligned_dt"
    )
