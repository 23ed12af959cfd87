"""Algorithm Distillation (AD): a causal transformer trained on learning histories acts in context.

Paper: Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm Distillation"
(arXiv 2210.14215; no official code). Protocol and numbers we compare with: the RA-DT paper
(Schmied et al. 2024, github.com/ml-jku/RA-DT), where AD reaches ≈55 mean reward at trial 40 on
the 20 held-out Dark-Room 10x10 goals.

The model predicts a_t from the history so far, across episode boundaries: one token per step,
token_t = emb(s_t) + emb(a_{t-1}) + proj(r_{t-1}), where (a_{t-1}, r_{t-1}) is the previous step
of the same learning history (the last step of the previous episode at an episode start). At
evaluation the policy keeps its KV cache across the 40 trials of a task, so each env step costs
one token step; the cache keeps the last `context_episodes × horizon` tokens and positions are
rotary (relative), so dropping old tokens needs no re-indexing. Like any rolling KV cache
(Mistral's sliding window), this equals re-encoding the last W tokens exactly while the trial
fits in the window and approximately after it: cached keys of a multi-layer model still carry
information from beyond the window (receptive field up to n_layer × W).

Deviations (all for 2-CPU budgets; `experiment=` configs can restore larger settings):
- one token per step (s, a_prev, r_prev) as in the AD-ε / headless-AD code, not three;
- the default context is one episode (100 steps) rather than several: on Dark-Room the goal's
  position stays in a one-episode window once the agent returns to it every episode, and the
  window is 16x cheaper to train than four episodes;
- default source: tabular Q-learning histories (`agents.qlearning`) instead of PPO
  (`source=ppo` gives the paper's PPO histories).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from agents import icl
from rl_core.cli import run_cli
from rl_core.config import to_dataclass
from rl_core.data import ADWindowSampler
from rl_core.nn import GPT, GPTConfig, KVCache, MultiDiscreteEmbedding
from rl_core.nn.sampling import sample_logits


@dataclass
class ADConfig:
    name: str = "ad"
    context_episodes: float = 1.0  # context = this many episodes of steps (tokens)
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.1
    eval_trials: int = 40  # consecutive episodes per held-out task, context kept across them
    temperature: float = 1.0  # action sampling temperature at evaluation (0 = greedy)
    top_p: float = 0.5  # nucleus sampling at evaluation, as RA-DT evaluates Dark-Room policies


class ADModel(nn.Module):
    """Tokens (s_t, a_{t-1}, r_{t-1}) -> logits over a_t. Shape legend: b batch, n steps, d width."""

    def __init__(self, obs_sizes: Sequence[int], n_actions: int, cfg: ADConfig, max_len: int):
        super().__init__()
        d = cfg.d_model
        self.n_actions = n_actions
        self.obs_emb = MultiDiscreteEmbedding(obs_sizes, d)
        self.prev_action_emb = nn.Embedding(n_actions + 1, d)  # index 0: no previous action
        self.prev_reward_proj = nn.Linear(1, d)
        gpt_cfg = GPTConfig(
            d_model=d, n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=cfg.dropout, max_len=max_len
        )
        self.gpt = GPT(gpt_cfg)
        self.head = nn.Linear(d, n_actions)

    def forward(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, cache: KVCache | None = None
    ) -> Tensor:
        """obs (b n k) int, prev_action (b n) int (-1 = none), prev_reward (b n) -> (b n A)."""
        x = self.obs_emb(obs)
        x = x + self.prev_action_emb(prev_action.long() + 1)
        x = x + self.prev_reward_proj(prev_reward.float().unsqueeze(-1))
        return self.head(self.gpt(x, cache=cache))


def ad_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of the history's actions on real (unpadded) steps."""
    logits = model(batch["obs"], batch["prev_action"], batch["prev_reward"])
    mask = batch["mask"]
    loss = F.cross_entropy(logits[mask], batch["action"][mask].long())
    accuracy = (logits[mask].argmax(-1) == batch["action"][mask]).float().mean()
    return loss, {"accuracy": accuracy.item()}


class ADPolicy:
    """Acts in context for a batch of tasks; the KV cache persists across episodes of a trial."""

    def __init__(
        self,
        model: ADModel,
        window: int,
        device: torch.device,
        temperature: float,
        seed: int,
        top_p: float = 1.0,
    ):
        self.model, self.window, self.device = model, window, device
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def reset(self, n_envs: int) -> None:
        self.cache = self.model.gpt.new_cache(self.window)
        self.prev_action = torch.full((n_envs,), -1, dtype=torch.long, device=self.device)
        self.prev_reward = torch.zeros(n_envs, device=self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=self.device).long()[:, None]
        logits = self.model(obs_t, self.prev_action[:, None], self.prev_reward[:, None], self.cache)
        action = sample_logits(logits[:, -1], self.temperature, self.generator, self.top_p)
        return action.cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.prev_action = torch.as_tensor(actions, device=self.device).long()
        self.prev_reward = torch.as_tensor(rewards, device=self.device).float()


def build(cfg: DictConfig) -> tuple[ADModel, ADConfig, int]:
    """The model for this env, its config and its context length in tokens."""
    agent_cfg = to_dataclass(cfg.agent, ADConfig, "agent")
    horizon = icl.darkroom_tasks(cfg.env).horizon
    context = max(1, int(round(agent_cfg.context_episodes * horizon)))
    torch.manual_seed(cfg.seed)
    model = ADModel((cfg.env.width, cfg.env.height), 5, agent_cfg, max_len=context)
    return model, agent_cfg, context


def make_policy(cfg: DictConfig, agent_cfg: ADConfig, context: int):
    def factory(model: nn.Module, device: torch.device) -> ADPolicy:
        return ADPolicy(
            model, context, device, agent_cfg.temperature, seed=cfg.seed, top_p=agent_cfg.top_p
        )

    return factory


def train(cfg: DictConfig) -> nn.Module:
    model, agent_cfg, context = build(cfg)
    return icl.train_agent(
        cfg,
        model,
        ad_loss,
        lambda store: ADWindowSampler(store, context),
        icl.icl_evaluator(cfg, make_policy(cfg, agent_cfg, context), agent_cfg.eval_trials),
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Re-run the in-context evaluation of a trained run (`run_dir/checkpoints/last.pt`)."""
    model, agent_cfg, context = build(cfg)
    policy = make_policy(cfg, agent_cfg, context)
    return icl.evaluate_agent(cfg, model, icl.icl_evaluator(cfg, policy, agent_cfg.eval_trials))


def diagnose(cfg: DictConfig) -> dict[str, float]:
    """Where a trained run's in-context reward goes: exploration vs exploitation."""
    model, agent_cfg, context = build(cfg)
    policy = make_policy(cfg, agent_cfg, context)
    return icl.diagnose_agent(cfg, model, policy, agent_cfg.eval_trials)


if __name__ == "__main__":
    run_cli(
        {"train": train, "eval": evaluate, "diagnose": diagnose, "collect": icl.collect},
        config_name="ad",
    )
