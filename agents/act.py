"""ACT: Action Chunking with Transformers, a CVAE that predicts k future actions per observation.

Paper: Zhao, Kumar, Levine, Finn, "Learning Fine-Grained Bimanual Manipulation with Low-Cost
Hardware" (RSS 2023, arXiv 2304.13705); official code github.com/tonyzhaozh/act (`policy.py`,
`detr/models/detr_vae.py`, `imitate_episodes.py`). SRT (Kim et al. 2024, arXiv 2407.12998) keeps
ACT and predicts actions relative to the current state, from images only; both are options here.

Model (as `DETRVAE`): a CNN turns the frame into a grid of feature tokens (2-D sine positions); a
transformer encoder reads [style latent z, proprioception, image tokens]; a transformer decoder
with k learned queries reads the encoder output and maps each query to one action. Training is a
CVAE: a BERT-like encoder over [CLS, proprioception, the demonstrated chunk] (fixed sinusoidal
positions, padded slots masked) gives the mean and log-variance of z; the loss is the L1 between
predicted and demonstrated chunks over non-padded slots plus `kl_weight` (beta, 10) times
KL(q(z) || N(0, I)) summed over latent dims and averaged over the batch. At test time z = 0.
Actions and proprioception are normalised with dataset statistics (std clipped at >= 1e-2),
stored as buffers so a checkpoint is self-contained. Execution (`rl_core.chunking.ChunkExecutor`):
`open_loop` (every k steps), `replan` (first `n_action_steps`, SRT), `ensemble` (every step,
temporal ensembling with w_i = exp(-m i), w_0 the oldest prediction, m = 0.01).

Paper sizes (README command, `detr/main.py`): chunk 100, hidden 512, feed-forward 3200, 8 heads,
4 encoder layers, 7 decoder layers (only the first one's output is used: see below), 4 CVAE encoder
layers, latent 32, dropout 0.1, post-norm, kl_weight 10, AdamW lr 1e-5 (backbone 1e-5), weight
decay 1e-4, batch 8, 2000 epochs over 50 demonstrations, ResNet18 backbone, 4 cameras at 480x640.
The defaults here are CPU-sized (configs/agent/act.yaml).

Deviations from the official code:
* backbone: a small stride-2 CNN trained from scratch, not the ImageNet ResNet18 (torchvision's
  pretrained weights cannot be downloaded here, and the frames are 32x32); no FrozenBatchNorm, no
  ImageNet normalisation (frames in [0, 1] minus 0.5), one learning rate for all weights; one
  camera (the official code concatenates cameras along the width);
* the decoder: with `return_intermediate_dec=True` followed by `[0]`, the official model uses the
  FIRST of its 7 decoder layers' outputs (the other six get no gradient; tonyzhaozh/act#25;
  LeRobot defaults to one layer). `first_decoder_layer_only=true` reproduces that (it builds and
  runs just that layer: the output is identical); false (default) uses the last of
  `n_decoder_layers` layers, as the paper describes;
* the L1 term is a mean over the non-padded slots (`l1_reduction: valid`); the official code
  averages over all slots with padded ones set to zero (`l1_reduction: all`);
* padded slots past an episode's end repeat its last action (official: zeros); they are masked in
  the loss and in the CVAE encoder either way;
* temporal ensembling is LeRobot's online running mean with an explicit count per slot, so an
  all-zero action is a real action (the official buffer uses exact 0 as "empty");
* observations arrive as one flat float32 vector (frame CHW, then proprioception), because the
  rollout loop and the store take arrays; the env's `image_shape` and `proprio_dim` give the layout;
* training: the shared Trainer (fixed steps, AdamW with warm-up + cosine, gradient clipping), the
  last checkpoint is kept (official: constant lr, epochs, best checkpoint by validation loss);
* `use_proprio: false` feeds zeros in place of the proprioception (SRT's images-only policy); the
  state is still read from the observation to turn relative actions back into absolute ones;
  relative actions are SRT's translation delta (a - s_t), without its SE(3) rotation composition.

Tasks and demonstrations: ACT's simulated transfer-cube (`env=aloha_transfer_cube`, gym-aloha
via envs/aloha.py: 48x64 top-camera frame + 14 joint positions; `env=aloha_transfer_cube_state`:
joints + cube pose) with the scripted expert of envs/aloha_expert.py (end-effector waypoints
replayed as joint targets), and the 2-D stand-in `env=point_reach`. Demonstrations are kept only
when the expert succeeded, so every one shows the task done; noise options (jitter, pauses) are
under `demos.expert`.

Commands: `python -m agents.act collect|train|eval|table env=...` (`collect` records
`demos.episodes` successful scripted demonstrations through the rollout loop into a cached
EpisodeStore; `train` fits and evaluates every mode in `agent.executions`, `eval_episodes`
rollouts each, and writes `results/act/ablation.csv` rows, `env` being the env's name plus its
`run_tag`; `eval` reloads the checkpoint and evaluates again; `table` prints the CSV's summary,
mean +- 95% t-interval over seeds). The ablation: `scripts/act_ablation.sh`, results/act/README.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import envs
from envs.aloha_expert import AlohaExpertConfig, AlohaScriptedExpert
from envs.point_reach import ExpertConfig, PointReachExpert
from rl_core.chunking import (
    EXECUTIONS,
    ActionRepresentation,
    ChunkExecutor,
    ChunkSampler,
    chunk_stats,
    masked_l1,
)
from rl_core.cli import run_cli, setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore, cache_root, open_or_build
from rl_core.logging import Logger, LoggerConfig
from rl_core.rollout import rollout
from rl_core.tables import read_rows, upsert_rows
from rl_core.train import TrainConfig, Trainer
from rl_core.utils import resolve_device

RESULT_COLUMNS = ("env", "demos", "chunk", "execution", "seed", "success_rate")
EVAL_SEED = 1_000_000  # evaluation initial states: the same for every run, unlike the demos'


@dataclass
class ACTConfig:
    """CPU-sized defaults; the paper's value is in each comment."""

    name: str = "act"
    chunk_size: int = 10  # k (paper 100)
    hidden_dim: int = 64  # (512)
    dim_feedforward: int = 256  # (3200)
    n_heads: int = 4  # (8)
    n_encoder_layers: int = 2  # (4)
    n_decoder_layers: int = 1  # (7, of which only the first is used: first_decoder_layer_only)
    first_decoder_layer_only: bool = False  # (true in the official code, by accident)
    n_vae_encoder_layers: int = 2  # (4)
    latent_dim: int = 32  # (32)
    dropout: float = 0.1  # (0.1) on residual and feed-forward paths
    attn_dropout: float = 0.0  # (0.1) on attention weights; > 0 forces slow attention on CPU
    kl_weight: float = 10.0  # beta (10)
    use_vae: bool = True  # false: no CVAE encoder, z = 0 always (the paper's "no CVAE" ablation)
    use_proprio: bool = True  # false: zeros instead of proprioception (SRT, images only)
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # (ResNet18)
    action_repr: str = "absolute"  # absolute (ACT) | relative (SRT: a - s_t)
    l1_reduction: str = "valid"  # valid | all (official: mean over all slots, pads as 0)
    std_min: float = 1e-2  # normalisation std clip (official 1e-2)
    execution: str = "ensemble"  # the mode reported as eval/success_rate
    executions: list[str] = field(default_factory=lambda: list(EXECUTIONS))  # all evaluated
    n_action_steps: int = 5  # `replan`: actions run per chunk, at most k (SRT: 20 of 100)
    ensemble_coeff: float = 0.01  # m in w_i = exp(-m i) (0.01)
    eval_episodes: int = 50  # rollouts per execution mode (50)

    def __post_init__(self) -> None:
        for mode in [self.execution, *self.executions]:
            if mode not in EXECUTIONS:
                raise ConfigError(
                    f"Bad value for 'agent.execution(s)': {mode!r}. Valid: {', '.join(EXECUTIONS)}"
                )
        if self.action_repr not in ("absolute", "relative"):
            raise ConfigError(
                f"Bad value for 'agent.action_repr': {self.action_repr!r}. "
                "Valid: absolute, relative"
            )
        if self.l1_reduction not in ("valid", "all"):
            raise ConfigError(
                f"Bad value for 'agent.l1_reduction': {self.l1_reduction!r}. Valid: valid, all"
            )


@dataclass
class DemoConfig:
    """The scripted demonstrations (`demos:` in configs/act.yaml)."""

    name: str = "clean"  # label in results/act (clean | noisy)
    episodes: int = 50  # ACT: 50 per task
    seed: int = 0  # seeds of the demonstrations' initial states and of the expert's noise
    expert: ExpertConfig = field(default_factory=ExpertConfig)


# ----------------------------------------------------------------------------- transformer


def sinusoid_table(n: int, d: int) -> Tensor:
    """(n d) fixed sinusoidal positions (ACT's `get_sinusoid_encoding_table`)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d)[None, :]
    angle = pos / torch.pow(10000.0, 2 * (i // 2) / d)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def sine_positions_2d(h: int, w: int, d: int, device: torch.device) -> Tensor:
    """((h w) d) DETR's normalised 2-D sine positions: d/2 channels for y, then d/2 for x."""
    half = d // 2
    scale = 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + 1e-6) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + 1e-6) * scale
    dim_t = 10000.0 ** (2 * (torch.arange(half, device=device) // 2) / half)

    def enc(v: Tensor) -> Tensor:
        p = v[:, None] / dim_t
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = repeat(enc(y), "h d -> h w d", w=w)
    pos_x = repeat(enc(x), "w d -> h w d", h=h)
    return rearrange(torch.cat([pos_y, pos_x], dim=-1), "h w d -> (h w) d")


class EncoderLayer(nn.Module):
    """DETR's post-norm encoder layer: positions are added to queries and keys in every layer."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, pad: Tensor | None = None) -> Tensor:
        q = k = x + pos
        x = self.norm1(
            x + self.drop1(self.attn(q, k, x, key_padding_mask=pad, need_weights=False)[0])
        )
        return self.norm2(x + self.drop2(self.ff(x)))


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: query positions on every self/cross-attention query."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        q = k = x + query_pos
        x = self.norms[0](x + self.drops[0](self.self_attn(q, k, x, need_weights=False)[0]))
        h = self.cross_attn(x + query_pos, memory + pos, memory, need_weights=False)[0]
        x = self.norms[1](x + self.drops[1](h))
        return self.norms[2](x + self.drops[2](self.ff(x)))


class SmallCNN(nn.Sequential):
    """Frames (b c h w) -> feature map (b c' h/2^L w/2^L): L stride-2 3x3 conv + ReLU layers."""

    def __init__(self, in_channels: int, channels: list[int]) -> None:
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, 3, stride=2, padding=1), nn.ReLU()]
            in_channels = c
        super().__init__(*layers)


# ----------------------------------------------------------------------------- model


class ACTModel(nn.Module):
    """obs (b o) -> chunk (b k a); a CVAE over the demonstrated chunk while training.

    Shape legend: b batch, k chunk, a action dims, p proprioception dims, n tokens, d width.
    """

    def __init__(
        self,
        cfg: ACTConfig,
        image_shape: tuple[int, int, int] | None,
        proprio_dim: int,
        action_dim: int,
    ) -> None:
        super().__init__()
        d, k = cfg.hidden_dim, cfg.chunk_size
        self.cfg, self.image_shape = cfg, image_shape
        self.proprio_dim, self.action_dim = proprio_dim, action_dim
        self.representation = ActionRepresentation(cfg.action_repr)
        block = (d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout, cfg.attn_dropout)
        # policy: [z, proprio, image tokens] -> encoder -> decoder with k queries -> actions
        if image_shape is not None:
            self.backbone = SmallCNN(image_shape[0], cfg.cnn_channels)
            self.input_proj = nn.Conv2d(cfg.cnn_channels[-1], d, kernel_size=1)
        self.proprio_proj = nn.Linear(proprio_dim, d)
        self.latent_out_proj = nn.Linear(cfg.latent_dim, d)
        self.extra_pos = nn.Embedding(2, d)  # learned positions of the z and proprio tokens
        self.encoder = nn.ModuleList(EncoderLayer(*block) for _ in range(cfg.n_encoder_layers))
        n_dec = 1 if cfg.first_decoder_layer_only else cfg.n_decoder_layers
        self.decoder = nn.ModuleList(DecoderLayer(*block) for _ in range(n_dec))
        self.decoder_norm = nn.LayerNorm(d)
        self.query_embed = nn.Embedding(k, d)
        self.action_head = nn.Linear(d, action_dim)
        # CVAE encoder: [CLS, proprio, a_1..a_k] -> (mu, logvar) of z
        if cfg.use_vae:
            self.cls_embed = nn.Embedding(1, d)
            self.vae_proprio_proj = nn.Linear(proprio_dim, d)
            self.vae_action_proj = nn.Linear(action_dim, d)
            self.vae_encoder = nn.ModuleList(
                EncoderLayer(*block) for _ in range(cfg.n_vae_encoder_layers)
            )
            self.latent_proj = nn.Linear(d, 2 * cfg.latent_dim)
            self.register_buffer("vae_pos", sinusoid_table(k + 2, d), persistent=False)
        # normalisation statistics, set by `set_stats` from the demonstrations
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))

    # -- data ---------------------------------------------------------------------------------
    def split_obs(self, obs: Tensor) -> tuple[Tensor | None, Tensor]:
        """Flat obs (b o) -> frames (b c h w) or None, and proprioception (b p)."""
        obs = obs.float()
        proprio = obs[:, obs.shape[1] - self.proprio_dim :]
        if self.image_shape is None:
            return None, proprio
        c, h, w = self.image_shape
        frames = rearrange(obs[:, : c * h * w], "b (c h w) -> b c h w", c=c, h=h, w=w)
        return frames, proprio

    def set_stats(self, sampler: ChunkSampler) -> None:
        """Normalisation of actions (in this representation) and proprioception, std >= std_min."""
        p = self.proprio_dim
        mean, std = chunk_stats(
            sampler, self.representation, lambda obs: obs[:, obs.shape[1] - p :]
        )
        proprio = np.asarray(sampler.columns["obs"][:, -p:], dtype=np.float64)
        lo = self.cfg.std_min
        self.action_mean.copy_(torch.as_tensor(mean))
        self.action_std.copy_(torch.as_tensor(std).clamp(min=lo))
        self.proprio_mean.copy_(torch.as_tensor(proprio.mean(0)))
        self.proprio_std.copy_(torch.as_tensor(proprio.std(0)).clamp(min=lo))

    def normalised_target(self, action: Tensor, proprio: Tensor) -> Tensor:
        """Absolute demonstrated chunk (b k a) -> the normalised regression target."""
        return (self.representation.to_relative(action.float(), proprio) - self.action_mean) / (
            self.action_std
        )

    # -- networks -----------------------------------------------------------------------------
    def encode_latent(
        self, proprio_n: Tensor, target: Tensor, is_pad: Tensor
    ) -> tuple[Tensor, Tensor]:
        """CVAE encoder: (mu, logvar) (b latent) of the style variable of a demonstrated chunk."""
        b = target.shape[0]
        tokens = torch.cat(
            [
                repeat(self.cls_embed.weight, "1 d -> b 1 d", b=b),
                self.vae_proprio_proj(proprio_n)[:, None],
                self.vae_action_proj(target),
            ],
            dim=1,
        )  # (b k+2 d)
        pad = torch.cat([is_pad.new_zeros(b, 2), is_pad], dim=1)  # CLS, proprio never padded
        h = tokens
        for layer in self.vae_encoder:
            h = layer(h, self.vae_pos[None], pad)
        mu, logvar = self.latent_proj(h[:, 0]).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, frames: Tensor | None, proprio_n: Tensor, z: Tensor) -> Tensor:
        """Policy: (frames, proprio, z) -> normalised chunk (b k a)."""
        b = proprio_n.shape[0]
        tokens = [self.latent_out_proj(z)[:, None], self.proprio_proj(proprio_n)[:, None]]
        pos = [repeat(self.extra_pos.weight, "n d -> b n d", b=b)]
        if frames is not None:
            fmap = self.input_proj(self.backbone(frames - 0.5))  # (b d h w)
            tokens.append(rearrange(fmap, "b d h w -> b (h w) d"))
            h, w = fmap.shape[-2:]
            pos.append(
                repeat(sine_positions_2d(h, w, fmap.shape[1], fmap.device), "n d -> b n d", b=b)
            )
        memory, memory_pos = torch.cat(tokens, dim=1), torch.cat(pos, dim=1)
        for layer in self.encoder:
            memory = layer(memory, memory_pos)
        query_pos = repeat(self.query_embed.weight, "k d -> b k d", b=b)
        x = torch.zeros_like(query_pos)
        for layer in self.decoder:
            x = layer(x, memory, memory_pos, query_pos)
        return self.action_head(self.decoder_norm(x))

    def forward(
        self, obs: Tensor, action: Tensor, is_pad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Training pass: (prediction, target) normalised (b k a), and the latent's (mu, logvar)."""
        frames, proprio = self.split_obs(obs)
        proprio_n = self._proprio_in(proprio)
        target = self.normalised_target(action, proprio)
        b = obs.shape[0]
        if self.cfg.use_vae:
            mu, logvar = self.encode_latent(proprio_n, target, is_pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        else:
            mu = logvar = None
            z = proprio_n.new_zeros(b, self.cfg.latent_dim)
        return self.decode(frames, proprio_n, z), target, mu, logvar

    def _proprio_in(self, proprio: Tensor) -> Tensor:
        proprio_n = (proprio - self.proprio_mean) / self.proprio_std
        return proprio_n if self.cfg.use_proprio else torch.zeros_like(proprio_n)

    @torch.no_grad()
    def predict(self, obs: Tensor) -> Tensor:
        """Test time (z = 0, the prior mean): the absolute chunk (b k a) for observations (b o)."""
        frames, proprio = self.split_obs(obs)
        proprio_n = self._proprio_in(proprio)
        z = proprio_n.new_zeros(obs.shape[0], self.cfg.latent_dim)
        chunk = self.decode(frames, proprio_n, z) * self.action_std + self.action_mean
        return self.representation.to_absolute(chunk, proprio)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, mean over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()


def act_loss(
    pred: Tensor,
    target: Tensor,
    is_pad: Tensor,
    mu: Tensor | None,
    logvar: Tensor | None,
    kl_weight: float,
    l1_reduction: str = "valid",
) -> tuple[Tensor, Tensor, Tensor]:
    """L = L1(pred, target; slots not in is_pad) + kl_weight * KL; returns (L, L1, KL)."""
    l1 = masked_l1(pred, target, is_pad, l1_reduction)
    kl = kl_divergence(mu, logvar) if mu is not None and logvar is not None else l1.new_zeros(())
    return l1 + kl_weight * kl, l1, kl


def make_loss_fn(cfg: ACTConfig):
    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        pred, target, mu, logvar = model(batch["obs"], batch["action"], batch["is_pad"])
        loss, l1, kl = act_loss(
            pred, target, batch["is_pad"], mu, logvar, cfg.kl_weight, cfg.l1_reduction
        )
        return loss, {"l1": l1.detach(), "kl": kl.detach()}

    return loss_fn


# ----------------------------------------------------------------------------- acting


class ACTPolicy:
    """ACT acting in a batch of envs: queries the model only for envs whose executor needs it."""

    def __init__(
        self, model: ACTModel, cfg: ACTConfig, device: torch.device, execution: str
    ) -> None:
        self.model, self.device = model, device
        # replan runs min(n_action_steps, k) actions per chunk, so one setting serves every k
        n_action_steps = min(cfg.n_action_steps, cfg.chunk_size)
        self.executor = ChunkExecutor(execution, cfg.chunk_size, n_action_steps, cfg.ensemble_coeff)
        self.queries = 0  # model calls (batched), for tests and throughput

    def reset(self, n_envs: int) -> None:
        self.executor.reset(n_envs)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        need = self.executor.need_query()
        chunks = None
        if need.any():
            self.queries += 1
            chunks = self.model.predict(torch.as_tensor(obs[need], device=self.device))
        return self.executor.step(chunks, need).float().cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.executor.end_episodes(dones)


# ----------------------------------------------------------------------------- env and data


def env_kwargs(env_cfg: DictConfig | dict) -> dict[str, Any]:
    return {k: v for k, v in dict(env_cfg).items() if k not in ("name", "run_tag")}


def env_fns(env_cfg: DictConfig | dict, n: int) -> list:
    return [functools.partial(envs.make, env_cfg["name"], **env_kwargs(env_cfg))] * n


def _point_reach_expert(env_cfg: Any, demos: DemoConfig, env_list: list) -> PointReachExpert:
    return PointReachExpert(float(env_cfg["speed"]), demos.expert, seed=demos.seed)


def _aloha_expert(env_cfg: Any, demos: DemoConfig, env_list: list) -> AlohaScriptedExpert:
    """gym-aloha transfer-cube / insertion: end-effector waypoints replayed as joint targets; the
    noise options shared with point_reach's expert carry over (jitter in metres of end-effector)."""
    e = demos.expert
    noise = AlohaExpertConfig(
        jitter_std=e.jitter_std, pause_prob=e.pause_prob,
        waypoint_pause_prob=e.waypoint_pause_prob, pause_min=e.pause_min, pause_max=e.pause_max,
    )  # fmt: skip
    return AlohaScriptedExpert(env_list, noise, seed=demos.seed, max_steps=env_list[0].max_steps)


@dataclass(frozen=True)
class ScriptedExpert:
    """How to script demonstrations for one env: `make(env_cfg, demos, envs) -> Policy`, and
    the return an episode must reach to be kept (its success)."""

    make: Any
    success_return: float


# env name -> scripted demonstrator; only its successful episodes are kept
SCRIPTED_EXPERTS = {
    "point_reach": ScriptedExpert(_point_reach_expert, success_return=1.0),
    "aloha_transfer_cube": ScriptedExpert(_aloha_expert, success_return=4.0),
    "aloha_insertion": ScriptedExpert(_aloha_expert, success_return=4.0),
}
MAX_DEMO_ROUNDS = 5  # collection rounds (each replacing the failed episodes) before giving up


class _KeepSuccessful:
    """A `record_to` for the rollout loop that writes only episodes whose max reward reaches
    `threshold` (staged rewards: aloha's 4; point_reach's 1 on reaching the target)."""

    def __init__(self, store: EpisodeStore, threshold: float) -> None:
        self.store, self.threshold = store, threshold
        self.kept = self.seen = 0

    def writer(self) -> _KeepSuccessful:
        self.inner = self.store.writer()
        return self

    def __enter__(self) -> _KeepSuccessful:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)

    def add(self, episode: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.seen += 1
        if float(np.max(episode["reward"])) >= self.threshold:
            self.kept += 1
            self.inner.add(episode, meta)


def env_label(env_cfg: DictConfig | dict) -> str:
    """The env as written in results/act: its name plus `run_tag` (e.g. `_state`), so runs that
    differ in observations (pixels vs state) get different rows."""
    return f"{env_cfg['name']}{env_cfg.get('run_tag') or ''}"


def demonstrations(cfg: DictConfig, *, progress: bool | None = None) -> EpisodeStore:
    """`demos.episodes` successful scripted demonstrations, recorded through the rollout loop
    and cached in `data_dir/<env>/demos_<name>_<hash>` (built atomically; reused by every run
    with equal env and demo settings). Failed episodes are dropped and replaced by new initial
    states (seeds `demos.seed + i`, i counting every attempt), up to MAX_DEMO_ROUNDS rounds. The
    expert's success rate is printed (and readable from the gaps in the kept episodes' seeds)."""
    name = cfg.env.name
    if name not in SCRIPTED_EXPERTS:
        raise ConfigError(
            f"env={name}: no scripted expert; ACT demonstrations exist for env="
            + " or env=".join(SCRIPTED_EXPERTS)
        )
    demos = to_dataclass(cfg.demos, DemoConfig, "demos")
    env_plain = OmegaConf.to_container(cfg.env, resolve=True)
    assert isinstance(env_plain, dict)
    attrs = {"env": env_plain, "demos": asdict(demos), "source": "scripted"}
    root = cache_root(cfg.data_dir, name, f"demos_{demos.name}", attrs)
    show = cfg.train.progress if progress is None else progress
    expert_spec = SCRIPTED_EXPERTS[name]

    def build(store: EpisodeStore) -> None:
        keep = _KeepSuccessful(store, expert_spec.success_return)
        for _ in range(MAX_DEMO_ROUNDS):
            n, first = demos.episodes - keep.kept, demos.seed + keep.seen
            if n <= 0:
                break
            env_list = [env_fns(cfg.env, 1)[0]() for _ in range(n)]  # the expert may read them
            round_demos = DemoConfig(demos.name, demos.episodes, first, demos.expert)
            expert = expert_spec.make(cfg.env, round_demos, env_list)
            meta = [
                {"env": name, "source": "scripted", "demos": demos.name, "seed": first + i}
                for i in range(n)
            ]
            rollout(
                [lambda e=e: e for e in env_list], expert, record_to=keep,
                metadata=meta, seed=first, progress=show, desc="demonstrations",
            )  # fmt: skip
        if keep.kept < demos.episodes:
            raise RuntimeError(
                f"the scripted expert succeeded in only {keep.kept} of {keep.seen} episodes; "
                f"{demos.episodes} demonstrations wanted"
            )
        print(
            f"scripted expert ({name}, demos={demos.name}): {keep.kept} successful of "
            f"{keep.seen} episodes ({keep.kept / keep.seen:.0%}); failures dropped"
        )

    return open_or_build(root, attrs, build)


# ----------------------------------------------------------------------------- commands


def build(cfg: DictConfig) -> tuple[ACTModel, ACTConfig]:
    agent_cfg = to_dataclass(cfg.agent, ACTConfig, "agent")
    env = envs.make(cfg.env.name, **env_kwargs(cfg.env))
    if not hasattr(env, "proprio_dim"):
        raise ConfigError(f"env={cfg.env.name} has no `image_shape`/`proprio_dim` obs layout")
    torch.manual_seed(cfg.seed)
    model = ACTModel(agent_cfg, env.image_shape, env.proprio_dim, env.action_space.shape[0])
    return model, agent_cfg


def evaluate_model(
    cfg: DictConfig, model: ACTModel, agent_cfg: ACTConfig, *, progress: bool = False
) -> dict[str, float]:
    """`eval_episodes` rollouts per execution mode, from the fixed evaluation initial states."""
    device = next(model.parameters()).device
    metrics: dict[str, float] = {}
    rows = []
    for mode in agent_cfg.executions:
        policy = ACTPolicy(model, agent_cfg, device, mode)
        result = rollout(
            env_fns(cfg.env, agent_cfg.eval_episodes), policy, seed=EVAL_SEED,
            progress=progress, desc=f"eval ({mode})",
        )  # fmt: skip
        final = [info[-1] for info in result.infos]
        success = float(np.mean([bool(i.get("is_success", False)) for i in final]))
        metrics[f"success_rate_{mode}"] = success
        if all("distance" in i for i in final):  # point_reach: distance to the target
            metrics[f"final_distance_{mode}"] = float(np.mean([i["distance"] for i in final]))
        metrics[f"episode_length_{mode}"] = float(result.lengths.mean())
        if all("stage" in i for i in final):  # aloha: highest staged reward (4 = success)
            metrics[f"stage_{mode}"] = float(np.mean([i["stage"] for i in final]))
        rows.append(
            {
                "env": env_label(cfg.env), "demos": cfg.demos.name, "chunk": agent_cfg.chunk_size,
                "execution": mode, "seed": int(cfg.seed), "success_rate": f"{success:.4f}",
            }
        )  # fmt: skip
    if agent_cfg.execution in agent_cfg.executions:
        metrics["success_rate"] = metrics[f"success_rate_{agent_cfg.execution}"]
    upsert_rows(
        Path(cfg.results_dir) / "act" / "ablation.csv", RESULT_COLUMNS, rows,
        key=RESULT_COLUMNS[:-1],
        sort_key=lambda r: (r["env"], r["demos"], int(r["chunk"]), r["execution"], int(r["seed"])),
    )  # fmt: skip
    return metrics


def train(cfg: DictConfig) -> nn.Module:
    run_dir = setup_run(cfg)
    store = demonstrations(cfg)
    model, agent_cfg = build(cfg)
    sampler = ChunkSampler(store, agent_cfg.chunk_size)
    model.set_stats(sampler)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    with Logger(logger_cfg, run_dir, cfg.run_name, {**resolved, "dataset": store.attrs}) as logger:
        trainer = Trainer(
            model,
            to_dataclass(cfg.train, TrainConfig, "train"),
            run_dir=run_dir,
            loss_fn=make_loss_fn(agent_cfg),
            sample_batch=sampler.sample,
            evaluate=lambda m, step: evaluate_model(cfg, m, agent_cfg),
            logger=logger,
            seed=cfg.seed,
            device=cfg.device,
            config=resolved,
        )
        return trainer.fit(resume=cfg.resume)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Reload `run_dir/checkpoints/last.pt` (weights and normalisation) and evaluate again."""
    model, agent_cfg = build(cfg)
    Trainer.load_weights(model, Path(cfg.run_dir))
    model.to(resolve_device(cfg.device)).eval()
    metrics = evaluate_model(cfg, model, agent_cfg, progress=cfg.train.progress)
    print(metrics)
    return metrics


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of Student's t 95% interval (0 for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), 0.0
    t = _T975.get(len(x) - 1, 1.96 + 2.5 / (len(x) - 1))  # t -> 1.96; within 1% for df >= 10
    return float(x.mean()), float(t * x.std(ddof=1) / np.sqrt(len(x)))


def summary_table(rows: list[dict[str, str]]) -> str:
    """Markdown: success rate (%) as mean +- 95% CI over seeds, one row per (env, demos, chunk),
    one column per execution mode; `n` = seeds."""
    cells: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for r in rows:
        key = (r["env"], r["demos"], int(r["chunk"]))
        cells.setdefault(key, {}).setdefault(r["execution"], []).append(float(r["success_rate"]))
    lines = [
        "| env | demos | chunk k | " + " | ".join(EXECUTIONS) + " | n |",
        "|---|---|---|" + "---|" * len(EXECUTIONS) + "---|",
    ]
    for (env, demos, chunk), by_mode in sorted(cells.items()):
        text = []
        for mode in EXECUTIONS:
            mean, ci = mean_ci95(by_mode[mode]) if mode in by_mode else (np.nan, np.nan)
            text.append(f"{100 * mean:.0f} ± {100 * ci:.0f}" if mode in by_mode else "–")
        n = max(len(v) for v in by_mode.values())
        lines.append(f"| {env} | {demos} | {chunk} | " + " | ".join(text) + f" | {n} |")
    return "\n".join(lines) + "\n"


def table(cfg: DictConfig) -> str:
    """Print the summary of `results_dir/act/ablation.csv` (see `summary_table`)."""
    path = Path(cfg.results_dir) / "act" / "ablation.csv"
    text = summary_table(read_rows(path, RESULT_COLUMNS))
    print(text, end="")
    return text


def collect(cfg: DictConfig) -> EpisodeStore:
    store = demonstrations(cfg)
    lengths = store.episode_lengths
    print(
        f"{len(store)} demonstrations, {store.num_steps} steps (length {lengths.min()}-"
        f"{lengths.max()}) in {store.root}"
    )
    return store


if __name__ == "__main__":
    run_cli(
        {"collect": collect, "train": train, "eval": evaluate, "table": table}, config_name="act"
    )
