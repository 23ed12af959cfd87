"""Decision Transformer (DT): return-conditioned sequence modelling within an episode.

Paper: Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence Modeling"
(official code github.com/kzl/decision-transformer; CORL `algorithms/offline/dt.py`). Here DT is
the baseline of the RA-DT paper's Dark-Room study (Schmied et al. 2024): trained on the same
learning histories as AD, evaluated for 40 consecutive episodes per held-out goal, where it shows
no in-context improvement (≈6 mean reward at trial 40 on 10x10) because its context never
crosses an episode boundary.

Tokens per step, as in the paper: (R̂_t, s_t, a_t), each embedding plus a learned embedding of
the timestep t within the episode (no other positions, as in the official GPT-2 variant); a_t
is predicted from the s_t token. Training windows are K steps of one episode, left-padded.
At evaluation each step appends (a_{t-1}, R̂_t, s_t) to a KV cache of the last 3K tokens; an
episode boundary starts a fresh context for that env (per-row attention mask), so evaluation
costs three token steps per env step for all tasks at once. Deviation: the official code
re-encodes the last K steps each step; a rolling cache equals that exactly for one layer and
approximately for more (older cached keys saw further back), the usual sliding-window trade.

Deviations: discrete actions with cross-entropy and sampled actions (RA-DT's DT does the same on
Dark-Room); target return sampled per episode from N(target_mean, target_std) as in RA-DT's
Dark-Room evaluation (N(90, 5) on 10x10); returns-to-go scaled by the episode length; defaults
sized for 2 CPU cores (paper sizes: embed 128, 3 layers, K=20 for gym).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig
from torch import Tensor, nn

from agents import alignment, icl
from rl_core.cli import run_cli
from rl_core.config import to_dataclass
from rl_core.data import DTWindowSampler
from rl_core.nn import GPT, GPTConfig, KVCache, MultiDiscreteEmbedding
from rl_core.nn.gpt import causal_mask
from rl_core.nn.sampling import sample_logits


@dataclass
class DTConfig:
    name: str = "dt"
    context_len: int = 20  # K steps (3K tokens)
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.1
    eval_trials: int = 40
    target_mean: float = 90.0  # target return sampled per episode at evaluation
    target_std: float = 5.0
    temperature: float = 1.0  # action sampling temperature at evaluation (0 = greedy)
    top_p: float = 0.5  # nucleus sampling at evaluation, as RA-DT evaluates Dark-Room policies
    num_targets: int = 7  # `align`: targets between the 5th and 95th dataset return percentile


class DTModel(nn.Module):
    """(R̂, s, a) tokens -> action logits at state tokens. b batch, n steps, d width."""

    def __init__(
        self, obs_sizes: Sequence[int], n_actions: int, horizon: int, cfg: DTConfig
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.horizon = horizon
        self.obs_emb = MultiDiscreteEmbedding(obs_sizes, d)
        self.action_emb = nn.Embedding(n_actions, d)
        self.rtg_proj = nn.Linear(1, d)
        self.time_emb = nn.Embedding(horizon, d)
        self.embed_ln = nn.LayerNorm(d)
        gpt_cfg = GPTConfig(
            d_model=d, n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=cfg.dropout,
            max_len=3 * cfg.context_len, pos="none",
        )  # fmt: skip
        self.gpt = GPT(gpt_cfg)
        self.head = nn.Linear(d, n_actions)

    def embed_obs(self, obs: Tensor) -> Tensor:
        return self.obs_emb(obs)

    def embed_rtg(self, rtg: Tensor) -> Tensor:
        return self.rtg_proj((rtg.float() / self.horizon).unsqueeze(-1))

    def tokens(self, rtg: Tensor, obs: Tensor, action: Tensor, timestep: Tensor) -> Tensor:
        """Interleave (R̂_t, s_t, a_t) per step: (b n) inputs -> (b 3n d) tokens."""
        t = self.time_emb(timestep.long())
        r, s, a = (
            self.embed_rtg(rtg) + t,
            self.embed_obs(obs) + t,
            self.action_emb(action.long()) + t,
        )
        return self.embed_ln(rearrange([r, s, a], "three b n d -> b (n three) d"))

    def forward(
        self, rtg: Tensor, obs: Tensor, action: Tensor, timestep: Tensor, mask: Tensor
    ) -> Tensor:
        """Training pass over left-padded windows; returns logits (b n A) at the state tokens."""
        x = self.tokens(rtg, obs, action, timestep)
        keep = rearrange(mask.repeat_interleave(3, dim=1), "b m -> b 1 1 m")
        attn = causal_mask(x.shape[1], x.shape[1], x.device) & keep
        attn = attn | torch.eye(x.shape[1], dtype=torch.bool, device=x.device)  # pads see self
        h = self.gpt(x, attn_mask=attn)
        return self.head(h[:, 1::3])


def dt_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(batch["rtg"], batch["obs"], batch["action"], batch["timestep"], batch["mask"])
    mask = batch["mask"]
    loss = F.cross_entropy(logits[mask], batch["action"][mask].long())
    accuracy = (logits[mask].argmax(-1) == batch["action"][mask]).float().mean()
    return loss, {"accuracy": accuracy.item()}


class DTPolicy:
    """DT acting in a batch of envs; each env's context starts fresh at its episode boundary."""

    def __init__(self, model: DTModel, cfg: DTConfig, device: torch.device, seed: int) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        # a training window of K steps shows the state token s_t the 3K-1 tokens R_{t-K+1}..s_t;
        # a cache of 3K would also show a_{t-K}, which no training window contains
        self.window = 3 * cfg.context_len - 1
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def reset(self, n_envs: int) -> None:
        self.cache: KVCache = self.model.gpt.new_cache(self.window)
        self.n = n_envs
        self.start = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        self.rtg = self._targets(np.ones(n_envs, dtype=bool), torch.zeros(n_envs))
        self.t = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        self.last_action: Tensor | None = None  # None at the start of every env's episode
        self.new_episode = torch.ones(n_envs, dtype=torch.bool, device=self.device)

    def _targets(self, which: np.ndarray, current: Tensor) -> Tensor:
        fresh = self.rng.normal(self.cfg.target_mean, self.cfg.target_std, size=len(which))
        return torch.where(torch.as_tensor(which), torch.as_tensor(fresh).float(), current).to(
            self.device
        )

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        model = self.model
        time = model.time_emb(self.t)
        r_tok = model.embed_rtg(self.rtg) + time
        s_tok = model.embed_obs(torch.as_tensor(obs, device=self.device)) + time
        if self.last_action is None:
            tokens = torch.stack([r_tok, s_tok], dim=1)
        else:
            prev_t = model.time_emb((self.t - 1).clamp(min=0))
            a_tok = model.action_emb(self.last_action) + prev_t
            # envs that just started an episode get a dummy action token that nothing attends to
            tokens = torch.stack([a_tok, r_tok, s_tok], dim=1)
        tokens = model.embed_ln(tokens)
        n_new = tokens.shape[1]
        total = min(len(self.cache) + n_new, self.window)
        key_pos = torch.arange(self.cache.offset + n_new - total, self.cache.offset + n_new)
        key_pos = key_pos.to(self.device)
        if self.last_action is not None:  # the action token of a finished episode is hidden
            self.start = torch.where(self.new_episode, self.cache.offset + 1, self.start)
        visible = key_pos[None, :] >= self.start[:, None]  # (b m)
        query_pos = self.cache.offset + torch.arange(n_new, device=self.device)
        attn = causal_mask(n_new, total, self.device)[None] & visible[:, None, :]
        attn = attn | (key_pos[None, None, :] == query_pos[None, :, None])  # a query sees itself
        context, context_mask = self.cross_context()
        h = model.gpt(
            tokens, cache=self.cache, attn_mask=attn[:, None], context=context,
            context_mask=context_mask,
        )  # fmt: skip
        logits = model.head(h[:, -1])
        self.last_logits = logits
        action = sample_logits(logits, self.cfg.temperature, self.generator, self.cfg.top_p)
        self.last_action = action
        self.new_episode = torch.zeros_like(self.new_episode)
        return action.cpu().numpy()

    def cross_context(self) -> tuple[Tensor | None, Tensor | None]:
        """Cross-attended context for this step; none for DT (RA-DT returns its retrieval)."""
        return None, None

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        rewards_t = torch.as_tensor(rewards, device=self.device).float()
        self.rtg = self.rtg - rewards_t
        self.t = (self.t + 1).clamp(max=self.model.horizon - 1)
        done_t = torch.as_tensor(dones, device=self.device)
        if done_t.any():
            self.rtg = self._targets(np.asarray(dones), self.rtg.cpu())
            self.t = torch.where(done_t, torch.zeros_like(self.t), self.t)
            self.new_episode = done_t.clone()


def build(cfg: DictConfig) -> tuple[DTModel, DTConfig]:
    agent_cfg = to_dataclass(cfg.agent, DTConfig, "agent")
    horizon = icl.darkroom_tasks(cfg.env).horizon
    torch.manual_seed(cfg.seed)
    return DTModel((cfg.env.width, cfg.env.height), 5, horizon, agent_cfg), agent_cfg


def make_policy(cfg: DictConfig, agent_cfg: DTConfig):
    def factory(model: nn.Module, device: torch.device) -> DTPolicy:
        return DTPolicy(model, agent_cfg, device, seed=cfg.seed)

    return factory


def train(cfg: DictConfig) -> nn.Module:
    model, agent_cfg = build(cfg)
    return icl.train_agent(
        cfg,
        model,
        dt_loss,
        lambda store: DTWindowSampler(store, agent_cfg.context_len),
        icl.icl_evaluator(cfg, make_policy(cfg, agent_cfg), agent_cfg.eval_trials),
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Re-run the in-context evaluation of a trained run (`run_dir/checkpoints/last.pt`)."""
    model, agent_cfg = build(cfg)
    policy = make_policy(cfg, agent_cfg)
    return icl.evaluate_agent(cfg, model, icl.icl_evaluator(cfg, policy, agent_cfg.eval_trials))


def align(cfg: DictConfig) -> dict[str, float]:
    """Return alignment of a trained DT (`agents.alignment`), for Return-Aligned DT's table."""
    from agents.return_aligned_dt import WindowPolicy

    model, agent_cfg = build(cfg)

    def factory(model: nn.Module, device: torch.device, targets: np.ndarray) -> WindowPolicy:
        return WindowPolicy(
            model, agent_cfg.context_len, targets, device, cfg.seed,
            agent_cfg.temperature, agent_cfg.top_p,
        )  # fmt: skip

    evaluator = alignment.make_evaluator(cfg, "dt", factory, agent_cfg.num_targets)
    return icl.evaluate_agent(cfg, model, evaluator)


if __name__ == "__main__":
    run_cli(
        {"train": train, "eval": evaluate, "align": align, "collect": icl.collect}, config_name="dt"
    )
