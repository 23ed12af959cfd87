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
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import DTWindowSampler
from rl_core.nn import GPT, GPTConfig, KVCache, MultiDiscreteEmbedding
from rl_core.nn.gpt import causal_mask
from rl_core.nn.sampling import TOP_P_MODES, sample_logits

POSITIONS = ("timestep", "window")


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
    # evaluation: cap the running return-to-go at `rtg_cap` x the steps left in the episode, the
    # most the rest of the episode can earn when one step pays at most `rtg_cap` (1 on
    # Dark-Room/Key-Door). Every training RTG obeys this bound, so an uncapped target (90 after
    # 30 unrewarded steps of a 100-step episode) is a value the policy never saw. None: no cap
    rtg_cap: float | None = None
    temperature: float = 1.0  # action sampling temperature at evaluation (0 = greedy)
    top_p: float = 0.5  # nucleus sampling at evaluation, as RA-DT evaluates Dark-Room policies
    top_p_mode: str = (
        "nucleus"  # nucleus | quantile (the official RA-DT sampler's meaning of top_p)
    )
    num_targets: int = 7  # `align`: targets between the 5th and 95th dataset return percentile
    # tokens per step: False = (R̂, s, a) as in the DT paper; True = RA-DT's (s, R̂, a, r), where
    # the policy also sees the reward of its previous step (a_t is predicted at R̂_t)
    reward_token: bool = False
    # positions: "timestep" = a learned embedding of t within the episode added to every token
    # (the DT paper); "window" = learned positions of the tokens within the K-step window, no
    # absolute time (RA-DT's `global_pos_embds`); needs re-encoded evaluation
    positions: str = "timestep"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ConfigError(
                f"agent.positions={self.positions!r}: expected one of {list(POSITIONS)}"
            )
        if self.rtg_cap is not None and not self.rtg_cap > 0:
            raise ConfigError(f"agent.rtg_cap={self.rtg_cap}: expected a positive number or null")
        if self.top_p_mode not in TOP_P_MODES:  # fail at config time, not after training
            raise ConfigError(
                f"agent.top_p_mode={self.top_p_mode!r}: expected one of {list(TOP_P_MODES)}"
            )


class DTModel(nn.Module):
    """(R̂, s, a) or (s, R̂, a, r) tokens -> action logits. b batch, n steps, d width.

    `step_tokens` tokens per step; the action is predicted at token `query_index` of its step
    (s_t, or R̂_t in the 4-token layout), and `state_index` is the position of s_t.
    """

    def __init__(
        self, obs_sizes: Sequence[int], n_actions: int, horizon: int, cfg: DTConfig
    ) -> None:
        super().__init__()
        d = cfg.d_model
        self.horizon = horizon
        self.obs_emb = MultiDiscreteEmbedding(obs_sizes, d)
        self.action_emb = nn.Embedding(n_actions, d)
        self.rtg_proj = nn.Linear(1, d)
        self.window_positions = cfg.positions == "window"
        # no unused parameters (DistributedDataParallel fails on them): one position scheme
        self.time_emb = None if self.window_positions else nn.Embedding(horizon, d)
        self.reward_token = cfg.reward_token
        self.reward_proj = nn.Linear(1, d) if cfg.reward_token else None
        self.step_tokens = 4 if cfg.reward_token else 3
        self.state_index = 0 if cfg.reward_token else 1
        self.query_index = 1
        self.embed_ln = nn.LayerNorm(d)
        self.pos_emb = (
            nn.Embedding(self.step_tokens * cfg.context_len, d) if self.window_positions else None
        )
        self.gpt = GPT(self.gpt_config(cfg))
        self.head = nn.Linear(d, n_actions)

    def gpt_config(self, cfg: DTConfig, **extra: bool) -> GPTConfig:
        return GPTConfig(
            d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=cfg.dropout,
            max_len=self.step_tokens * cfg.context_len, pos="none", **extra,
        )  # fmt: skip

    def embed_obs(self, obs: Tensor) -> Tensor:
        return self.obs_emb(obs)

    def embed_rtg(self, rtg: Tensor) -> Tensor:
        return self.rtg_proj((rtg.float() / self.horizon).unsqueeze(-1))

    def embed_reward(self, reward: Tensor) -> Tensor:
        assert self.reward_proj is not None
        return self.reward_proj(reward.float().unsqueeze(-1))

    def tokens(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        reward: Tensor | None = None,
    ) -> Tensor:
        """Interleave the step's tokens: (b n) inputs -> (b Sn d), S = `step_tokens`."""
        t = self.time_emb(timestep.long()) if self.time_emb is not None else 0.0
        r, s, a = (
            self.embed_rtg(rtg) + t,
            self.embed_obs(obs) + t,
            self.action_emb(action.long()) + t,
        )
        if not self.reward_token:
            x = self.embed_ln(rearrange([r, s, a], "k b n d -> b (n k) d"))
        elif reward is None:
            raise ValueError("reward_token=True needs the window's `reward`")
        else:
            w = self.embed_reward(reward) + t
            x = self.embed_ln(rearrange([s, r, a, w], "k b n d -> b (n k) d"))
        if self.pos_emb is None:
            return x
        # right-aligned: the last step of a window always sits in the table's last slots
        end = self.pos_emb.num_embeddings
        return x + self.pos_emb(torch.arange(end - x.shape[1], end, device=x.device))

    def encode(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        mask: Tensor,
        reward: Tensor | None = None,
        **cross: Tensor | None,
    ) -> Tensor:
        """Last-layer features (b Sn d) of left-padded windows (`cross`: context, context_mask)."""
        x = self.tokens(rtg, obs, action, timestep, reward)
        keep = rearrange(mask.repeat_interleave(self.step_tokens, dim=1), "b m -> b 1 1 m")
        attn = causal_mask(x.shape[1], x.shape[1], x.device) & keep
        attn = attn | torch.eye(x.shape[1], dtype=torch.bool, device=x.device)  # pads see self
        return self.gpt(x, attn_mask=attn, **cross)

    def forward(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        mask: Tensor,
        reward: Tensor | None = None,
    ) -> Tensor:
        """Training pass over left-padded windows; returns action logits (b n A)."""
        h = self.encode(rtg, obs, action, timestep, mask, reward)
        return self.head(h[:, self.query_index :: self.step_tokens])


def dt_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(
        batch["rtg"], batch["obs"], batch["action"], batch["timestep"], batch["mask"],
        batch.get("reward"),
    )  # fmt: skip
    mask = batch["mask"]
    loss = F.cross_entropy(logits[mask], batch["action"][mask].long())
    accuracy = (logits[mask].argmax(-1) == batch["action"][mask]).float().mean()
    return loss, {"accuracy": accuracy.item()}


class DTPolicy:
    """DT acting in a batch of envs; each env's context starts fresh at its episode boundary."""

    reencodes = False  # True: each step re-encodes the window (no KV cache, any positions)

    def __init__(self, model: DTModel, cfg: DTConfig, device: torch.device, seed: int) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        if model.window_positions and not self.reencodes:
            raise ConfigError(
                "agent.positions=window: the rolling KV cache of this policy needs timestep "
                "positions; use positions=timestep (or RA-DT's agent.reencode=true)"
            )
        # a training window of K steps shows the query token of step t the S(K-1) + 2 tokens
        # from the first token of step t-K+1 up to itself; a longer cache would also show the
        # tail of step t-K, which no training window contains
        s = model.step_tokens
        self.window = s * cfg.context_len - (s - 2)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def reset(self, n_envs: int) -> None:
        self.cache: KVCache = self.model.gpt.new_cache(self.window)
        self.n = n_envs
        self.start = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        self.t = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        self.target_left = self._targets(np.ones(n_envs, dtype=bool), torch.zeros(n_envs))
        self.last_action: Tensor | None = None  # None at the start of every env's episode
        self.last_reward = torch.zeros(n_envs, device=self.device)
        self.new_episode = torch.ones(n_envs, dtype=torch.bool, device=self.device)

    @property
    def rtg(self) -> Tensor:
        """The return-to-go the policy conditions on: the episode's target minus what it earned
        so far, bounded by what the steps left can earn (`cfg.rtg_cap` per step), if set."""
        if self.cfg.rtg_cap is None:
            return self.target_left
        cap = self.cfg.rtg_cap * (self.model.horizon - self.t).float()
        return torch.minimum(self.target_left, cap)

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
        step = [s_tok, r_tok] if model.reward_token else [r_tok, s_tok]
        prev: list[Tensor] = []
        if self.last_action is not None:
            # the previous step's trailing tokens; envs that just started an episode get dummy
            # ones that nothing attends to
            prev_t = model.time_emb((self.t - 1).clamp(min=0))
            prev.append(model.action_emb(self.last_action) + prev_t)
            if model.reward_token:
                prev.append(model.embed_reward(self.last_reward) + prev_t)
        tokens = model.embed_ln(torch.stack(prev + step, dim=1))
        n_new = tokens.shape[1]
        total = min(len(self.cache) + n_new, self.window)
        key_pos = torch.arange(self.cache.offset + n_new - total, self.cache.offset + n_new)
        key_pos = key_pos.to(self.device)
        if prev:  # the trailing tokens of a finished episode are hidden
            self.start = torch.where(self.new_episode, self.cache.offset + len(prev), self.start)
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
        action = sample_logits(
            logits, self.cfg.temperature, self.generator, self.cfg.top_p, self.cfg.top_p_mode
        )
        self.last_action = action
        self.new_episode = torch.zeros_like(self.new_episode)
        return action.cpu().numpy()

    def cross_context(self) -> tuple[Tensor | None, Tensor | None]:
        """Cross-attended context for this step; none for DT (RA-DT returns its retrieval)."""
        return None, None

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        rewards_t = torch.as_tensor(rewards, device=self.device).float()
        self.last_reward = rewards_t
        self.target_left = self.target_left - rewards_t
        self.t = (self.t + 1).clamp(max=self.model.horizon - 1)
        done_t = torch.as_tensor(dones, device=self.device)
        if done_t.any():
            self.target_left = self._targets(np.asarray(dones), self.target_left.cpu())
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
