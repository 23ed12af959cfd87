"""Chunked Decision Transformer: a DT that predicts the next k actions at every step.

Issue 5 asks that the action-chunking pieces of `rl_core.chunking` (ACT, Zhao et al. 2023,
github.com/tonyzhaozh/act; SRT, Kim et al. 2024) work on a framework agent other than ACT. This
is that agent: `agents.dt` (Chen et al. 2021, github.com/kzl/decision-transformer) with its
per-step action head replaced by `ChunkedActionHead`, trained and evaluated exactly as DT on the
Dark-Room learning histories (`agents.icl`), so DT and chunked DT share one results table.
There is no paper for this combination; everything not said here is DT's (agents/dt.py).

What is reused, not copied:

* `DTModel` (tokens, timestep embeddings, GPT) and `DTPolicy` (the KV-cached context, per-env
  episode boundaries, return-to-go targets) from `agents.dt`; `DTWindowSampler` from `rl_core.data`.
* From `rl_core.chunking`: `ChunkedActionHead` (features -> k x 5 logits), `ChunkSampler`
  (the k future actions of a step, padded past the episode end and flagged in `is_pad`) and
  `ChunkExecutor` / `TemporalEnsembler` (open_loop, replan, ensemble execution).

How the pieces fit Dark-Room's discrete actions:

* Model: at the s_t token (DT's query token) the head gives logits (k, 5) for a_t..a_{t+k-1}.
  `DTModel.head` becomes the identity, so DT's code hands back the query features.
* Loss: cross-entropy over every valid (window step, chunk slot) pair, one mean over them (every
  real action weighs the same, like `masked_l1(reduction="valid")`). Valid = a real window step
  (DT's `mask`) and a chunk slot not past the episode's end (`ChunkSampler`'s `is_pad`). Targets
  beyond the window's last step but inside the episode are used: predicting them is the point.
  `rl_core.chunking` has only the L1 loss of continuous actions; the masked cross-entropy lives
  here (`masked_cross_entropy`).
* Execution: the executor handles action *probabilities*, softmax(logits) of shape (k, 5) per
  query, and one distribution per step comes out. open_loop and replan queue a chunk's
  distributions and run them slot by slot. ensemble passes them through `TemporalEnsembler`,
  sum_i w_i p_i / sum_i w_i with w_i = exp(-m i) and w_0 on the oldest prediction. This is the
  discrete analogue of ACT's averaging of continuous actions. A convex combination of
  distributions is a distribution, and averaging sampled indices would mean nothing. The step's
  action is then drawn from that distribution with DT's `temperature` (applied after ensembling,
  as softmax(log p / T); 0 = argmax) and `top_p`. With k = 1 every mode equals DT's sampling.
* The context: whatever the mode, every step's (a, R̂, s) tokens enter the DT context, and a is
  the action actually executed. So open_loop does not save model calls as it does for ACT (the
  context must advance each step); it only ignores the newest observations for k - 1 steps.
  Episode boundaries reset an env's executor slots (`ChunkExecutor.end_episodes`), so nothing
  carries over, just as DT's context starts fresh.

Results: `train`/`eval` write the in-context curve to `results/<env>/icl_<w>x<h>.csv` through
`agents.icl.report`, as DT does. Rows are keyed (agent, seed), and the agent name must start with
`chunked_dt` (a `ConfigError` otherwise), so a run cannot replace the `dt`/`ad`/`radt` rows. Name
other settings `agent.name=chunked_dt_open_loop` and the like.

Shape legend: b batch (envs), n window steps, k chunk length, A action logits (5), d width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from agents import icl
from agents.dt import DTConfig, DTModel, DTPolicy
from rl_core.chunking import EXECUTIONS, ChunkedActionHead, ChunkExecutor, ChunkSampler
from rl_core.cli import run_cli
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import DTWindowSampler, EpisodeStore
from rl_core.nn.sampling import sample_logits

N_ACTIONS = 5  # Dark-Room / Key-Door: up, right, down, left, stay
AGENT_PREFIX = "chunked_dt"


@dataclass
class ChunkedDTConfig(DTConfig):
    name: str = AGENT_PREFIX  # must start with `chunked_dt` (results rows are keyed by it)
    chunk_size: int = 4  # k actions predicted per step
    execution: str = "ensemble"  # ensemble | open_loop | replan
    replan_every: int = 2  # replan: run this many actions of each chunk (capped at k)
    ensemble_coeff: float = 0.01  # ensemble: w_i = exp(-m i), w_0 on the oldest prediction
    head_hidden: int = 0  # ChunkedActionHead: 0 = one linear map, > 0 = MLP of this width


def check_config(cfg: ChunkedDTConfig) -> None:
    """Raise a `ConfigError` naming the key for values the dataclass types cannot reject."""
    if not cfg.name.startswith(AGENT_PREFIX):
        raise ConfigError(
            f"agent.name={cfg.name!r} must start with {AGENT_PREFIX!r}: results rows are keyed "
            f"by (agent, seed), and another name could replace DT's or AD's committed rows"
        )
    if cfg.execution not in EXECUTIONS:
        raise ConfigError(f"agent.execution={cfg.execution!r}: expected one of {EXECUTIONS}")
    if cfg.chunk_size < 1:
        raise ConfigError(f"agent.chunk_size must be >= 1, got {cfg.chunk_size}")
    if cfg.replan_every < 1:
        raise ConfigError(f"agent.replan_every must be >= 1, got {cfg.replan_every}")


# ----------------------------------------------------------------------------- model


class ChunkedDTModel(DTModel):
    """DT whose s_t token predicts logits for a_t..a_{t+k-1}: (b n) inputs -> (b n k A).

    `head` (DT's per-step head) is the identity, so `DTModel.forward` and `DTPolicy` return the
    query token's features; `chunk_head` maps them to the chunk. With k = 1 and
    `chunk_head.net.weight = head.weight` of a DT, the logits are DT's exactly.
    """

    def __init__(
        self, obs_sizes: Sequence[int], n_actions: int, horizon: int, cfg: ChunkedDTConfig
    ) -> None:
        super().__init__(obs_sizes, n_actions, horizon, cfg)
        self.head = nn.Identity()
        self.chunk_head = ChunkedActionHead(cfg.d_model, cfg.chunk_size, n_actions, cfg.head_hidden)
        self.chunk_size = cfg.chunk_size

    def forward(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        mask: Tensor,
        reward: Tensor | None = None,
    ) -> Tensor:
        """Training pass over left-padded windows; chunk logits (b n k A)."""
        return self.chunk_head(super().forward(rtg, obs, action, timestep, mask, reward))


# ----------------------------------------------------------------------------- data and loss


class ChunkedDTWindowSampler(DTWindowSampler):
    """DT windows plus, at each window step, the episode's next k actions from that step.

    Extra batch keys: `action_chunk` (B, K, k, ...), a_{t}..a_{t+k-1} for the window's step t,
    and `chunk_pad` (B, K, k) bool, True past the episode's end (`ChunkSampler.is_pad`) and on the
    window's left padding. Chunks come from `ChunkSampler.batch_at` at the flat step of each window
    position; a `step` column added to the DT sampler's gather columns gives those indices.
    """

    def __init__(
        self,
        store: EpisodeStore,
        context_len: int,
        chunk_size: int,
        *,
        episodes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(store, context_len, episodes=episodes)
        self.chunks = ChunkSampler(store, chunk_size, episodes=episodes)
        chunk_t = np.arange(self.chunks.num_steps) - np.repeat(
            self.chunks.starts, self.chunks.lengths
        )
        if not np.array_equal(chunk_t, self._t):  # both samplers must order steps alike
            raise AssertionError("ChunkSampler and DTWindowSampler disagree on the step order")
        self.columns["step"] = np.arange(self.num_steps + 1)  # the pad row gathers num_steps

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = super().sample(batch_size, rng)
        step = batch.pop("step")  # (B K) flat steps; num_steps on left padding
        b, n = step.shape
        chunk = self.chunks.batch_at(np.minimum(step, self.num_steps - 1).reshape(-1))
        action = chunk["action"]
        batch["action_chunk"] = action.reshape(b, n, *action.shape[1:])
        batch["chunk_pad"] = chunk["is_pad"].reshape(b, n, -1) | ~batch["mask"][..., None]
        return batch


def masked_cross_entropy(logits: Tensor, target: Tensor, is_pad: Tensor) -> Tensor:
    """Cross-entropy of chunk logits (... k A) against actions (... k), mean over ~is_pad."""
    valid = ~is_pad
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), target[valid].long())


def chunked_dt_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(
        batch["rtg"], batch["obs"], batch["action"], batch["timestep"], batch["mask"],
        batch.get("reward"),
    )  # fmt: skip
    target, pad = batch["action_chunk"].long(), batch["chunk_pad"]
    loss = masked_cross_entropy(logits, target, pad)
    with torch.no_grad():
        hit = logits.argmax(-1) == target  # (b n k)
        valid = ~pad
        metrics = {
            "accuracy": hit[..., 0][valid[..., 0]].float().mean().item(),  # a_t, as DT's
            "chunk_accuracy": hit[valid].float().mean().item(),
        }
    return loss, metrics


# ----------------------------------------------------------------------------- acting


class ChunkedDTPolicy(DTPolicy):
    """Chunked DT acting in a batch of envs through a `ChunkExecutor` (module docstring).

    `DTPolicy.act` advances every env's context by this step and leaves `model.head`'s output,
    here the query token's features, in `last_logits`. It is given a copy of the config with
    temperature 0, so its own pick is an argmax that draws nothing from the generator; `act`
    replaces that pick (`last_action`, the next step's action token) by the executed action.
    """

    def __init__(
        self, model: ChunkedDTModel, cfg: ChunkedDTConfig, device: torch.device, seed: int
    ) -> None:
        super().__init__(model, replace(cfg, temperature=0.0), device, seed)
        self.chunk_cfg = cfg
        self.chunk_head = model.chunk_head
        n_action_steps = min(cfg.replan_every, cfg.chunk_size)
        self.executor = ChunkExecutor(
            cfg.execution, cfg.chunk_size, n_action_steps, cfg.ensemble_coeff
        )
        self.queries = 0  # envs x steps whose chunk was used (open_loop: 1/k of the steps)
        self.last_probs: Tensor | None = None  # (b A) the distribution each env acted from

    def reset(self, n_envs: int) -> None:
        super().reset(n_envs)
        self.executor.reset(n_envs)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        super().act(obs)
        features = self.last_logits  # (b d), see the class docstring
        need = self.executor.need_query()
        chunks = None
        if need.any():
            self.queries += int(need.sum())
            rows = torch.as_tensor(need, device=features.device)
            chunks = self.chunk_head(features[rows]).float().softmax(-1)  # (q k A)
        probs = self.executor.step(chunks, need)  # (b A)
        self.last_probs = probs
        cfg = self.chunk_cfg
        action = sample_logits(probs.log(), cfg.temperature, self.generator, cfg.top_p)
        self.last_action = action
        return action.cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        super().observe(actions, rewards, dones)
        self.executor.end_episodes(np.asarray(dones, dtype=bool))


# ----------------------------------------------------------------------------- commands


def build(cfg: DictConfig) -> tuple[ChunkedDTModel, ChunkedDTConfig]:
    agent_cfg = to_dataclass(cfg.agent, ChunkedDTConfig, "agent")
    check_config(agent_cfg)
    horizon = icl.darkroom_tasks(cfg.env).horizon
    torch.manual_seed(cfg.seed)
    model = ChunkedDTModel((cfg.env.width, cfg.env.height), N_ACTIONS, horizon, agent_cfg)
    return model, agent_cfg


def make_policy(cfg: DictConfig, agent_cfg: ChunkedDTConfig):
    def factory(model: nn.Module, device: torch.device) -> ChunkedDTPolicy:
        assert isinstance(model, ChunkedDTModel)
        return ChunkedDTPolicy(model, agent_cfg, device, seed=cfg.seed)

    return factory


def train(cfg: DictConfig) -> nn.Module:
    model, agent_cfg = build(cfg)
    return icl.train_agent(
        cfg,
        model,
        chunked_dt_loss,
        lambda store: ChunkedDTWindowSampler(store, agent_cfg.context_len, agent_cfg.chunk_size),
        icl.icl_evaluator(cfg, make_policy(cfg, agent_cfg), agent_cfg.eval_trials),
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Re-run the in-context evaluation of a trained run (`run_dir/checkpoints/last.pt`)."""
    model, agent_cfg = build(cfg)
    policy = make_policy(cfg, agent_cfg)
    return icl.evaluate_agent(cfg, model, icl.icl_evaluator(cfg, policy, agent_cfg.eval_trials))


if __name__ == "__main__":
    run_cli({"train": train, "eval": evaluate, "collect": icl.collect}, config_name="chunked_dt")
