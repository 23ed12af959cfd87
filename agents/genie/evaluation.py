"""Genie's held-out metrics (`results/genie/heldout.csv`), each next to the baseline it must beat.

Data: `agent.heldout.steps` random-policy steps from seeds the training run never uses
(`agents.world_model_common.heldout_store`), cut into `agent.heldout.clips` clips that lie fully
inside one episode, resized to the model's frame size. Rows (metric: model vs baseline):

* `tokenizer_psnr`: reconstruction PSNR of clips of `agent.clip_frames` frames (10 log10 1/MSE
  over all pixels) vs predicting every frame as the training store's mean frame;
* `latent_action_nmi`, `latent_action_majority_accuracy`: the LAM's codes on held-out transitions
  against the env's true actions (`lam.latent_action_agreement`) vs the same codes randomly
  permuted across transitions (chance with the same code histogram, which keeps the small-sample
  bias of both scores); `latent_action_majority_accuracy` also has a `most_frequent_action` row;
* `lam_codebook_usage`: fraction of the |A| latent codes used on held-out transitions vs a
  collapsed codebook (1/|A|);
* `dynamics_masked_acc`: masked-token accuracy of the dynamics loss (mask rate ~ U(0.5, 1), frame
  0 visible, LAM-inferred actions) vs copying the previous frame's token at the same positions;
* `next_frame_psnr`: the last frame of each clip predicted by MaskGIT from the earlier frames'
  tokens and the LAM-inferred actions, decoded by the tokenizer, vs copying the last real frame;
* `delta_t_psnr_t4` (Genie §3, controllability): from the first frame of a 5-frame clip, 4 frames
  generated with the LAM-inferred actions of that clip and 4 generated with uniformly random latent
  actions; ΔtPSNR = PSNR(x_4, x̂_4 inferred) - PSNR(x_4, x̂_4 random), vs 0 (no control);
  `rollout_psnr_t4` gives both PSNRs (inferred vs random actions).
PSNRs over clips are means of per-clip PSNRs except `tokenizer_psnr` (pooled MSE, as training).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from agents.genie.lam import latent_action_agreement
from agents.world_model_common import metric_row

MODEL = "genie"


def _psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-item PSNR (b,) of frames (b, c, h, w) in [0, 1]."""
    mse = (pred - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def _pooled_psnr(mse: float) -> float:
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def mean_frame(cfg: DictConfig, device: torch.device, size: int) -> Tensor:
    """The training store's mean frame (c, size, size), from up to 2,000 sampled frames."""
    from agents.genie.agent import collect_store, resize_frames
    from agents.world_model_common import to_torch
    from rl_core.data.segments import SegmentSampler

    sampler = SegmentSampler(collect_store(cfg))
    rng = np.random.default_rng(int(cfg.seed) + 99)
    frames = to_torch(sampler.sample_context(min(2000, sampler.total_steps), 0, rng), device)
    return resize_frames(frames["frames"], size).mean(dim=(0, 1))


@torch.no_grad()
def heldout_rows(cfg: DictConfig, models: Any, device: torch.device) -> list[dict[str, Any]]:
    from agents.genie.agent import action_space, decode_tokens, valid_clips
    from agents.world_model_common import heldout_store
    from rl_core.data.segments import SegmentSampler

    h = cfg.agent.heldout
    n, bs = int(h.clips), int(h.batch_size)
    tok, lam, dyn = models.tokenizer, models.lam, models.dynamics
    size, t = models.image_size, models.clip_frames
    sampler = SegmentSampler(heldout_store(cfg, action_space(cfg)))
    rng = np.random.default_rng(int(cfg.seed) + 2024)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed) + 5)
    clips = valid_clips(sampler, n, t, rng, device, size)
    frames, true_actions = clips["frames"], clips["action"]
    rows = []

    # tokenizer reconstruction vs the mean frame
    se_model = se_base = 0.0
    mean = mean_frame(cfg, device, size)
    codes = []
    for s in _batches(n, bs):
        x = frames[s]
        z = tok.encode(x)
        codes.append(z)
        se_model += float((tok.decode(z) - x).pow(2).sum())
        se_base += float((mean - x).pow(2).sum())
    count = frames.numel()
    rows.append(metric_row("tokenizer_psnr", MODEL, "mean_frame",
                           _pooled_psnr(se_model / count), _pooled_psnr(se_base / count)))  # fmt: skip
    tokens = torch.cat(codes)

    # latent actions vs the true env actions
    latent = torch.cat([lam.infer_actions(frames[s]) for s in _batches(n, bs)])  # (n, t-1)
    lc, ta = latent.cpu().numpy().reshape(-1), true_actions.cpu().numpy().reshape(-1)
    agree = latent_action_agreement(lc, ta)
    shuffled = latent_action_agreement(np.random.default_rng(int(cfg.seed)).permutation(lc), ta)
    rows.append(metric_row("latent_action_nmi", MODEL, "permuted_codes", agree["nmi"],
                           shuffled["nmi"]))  # fmt: skip
    rows.append(metric_row("latent_action_majority_accuracy", MODEL, "permuted_codes",
                           agree["majority_accuracy"], shuffled["majority_accuracy"]))  # fmt: skip
    rows.append(metric_row("latent_action_majority_accuracy", MODEL, "most_frequent_action",
                           agree["majority_accuracy"], agree["chance_accuracy"]))  # fmt: skip
    num = lam.cfg.num_latent_actions
    rows.append(metric_row("lam_codebook_usage", MODEL, "collapsed_codebook",
                           len(np.unique(lc)) / num, 1.0 / num))  # fmt: skip

    # dynamics masked-token accuracy vs copy-previous-frame tokens
    acc = copy = 0.0
    batches = 0
    for s in _batches(n, bs):
        _, m = dyn.compute_loss({"tokens": tokens[s], "actions": latent[s]}, generator=gen)
        acc, copy, batches = acc + m["masked_acc"], copy + m["copy_acc"], batches + 1
    rows.append(metric_row("dynamics_masked_acc", MODEL, "copy_previous_tokens",
                           acc / batches, copy / batches))  # fmt: skip

    # next frame: MaskGIT from the clip's first t-1 frames and LAM actions, decoded, vs copy-last
    nf_model, nf_copy = [], []
    for s in _batches(n, bs):
        z, a = tokens[s], latent[s]
        past_actions = a[:, : t - 2] if t > 2 else None
        nxt = dyn.predict_next(z[:, : t - 1], a[:, t - 2], past_actions, generator=gen)
        pred = decode_tokens(tok, torch.cat([z[:, : t - 1], nxt[:, None]], dim=1))[:, -1]
        nf_model.append(_psnr(pred, frames[s, -1]))
        nf_copy.append(_psnr(frames[s, -2], frames[s, -1]))
    rows.append(metric_row("next_frame_psnr", MODEL, "copy_last_frame",
                           torch.cat(nf_model).mean(), torch.cat(nf_copy).mean()))  # fmt: skip

    # ΔtPSNR at t = 4: inferred vs random latent actions from one prompt frame
    k = 4
    clips5 = valid_clips(sampler, n, k + 1, rng, device, size)["frames"]
    p_inf, p_rand = [], []
    for s in _batches(n, bs):
        x = clips5[s]
        z0 = tok.encode(x[:, :1])
        a_inf = lam.infer_actions(x)  # (b, k)
        a_rand = torch.randint(0, num, a_inf.shape, generator=gen, device=device)
        for acts, out in ((a_inf, p_inf), (a_rand, p_rand)):
            fut = dyn.rollout(z0, acts, generator=gen)
            pred = decode_tokens(tok, torch.cat([z0, fut], dim=1))[:, k]
            out.append(_psnr(pred, x[:, k]))
    inf, rand = torch.cat(p_inf).mean(), torch.cat(p_rand).mean()
    rows.append(metric_row("delta_t_psnr_t4", MODEL, "zero_no_control", inf - rand, 0.0))
    rows.append(metric_row("rollout_psnr_t4", "inferred_actions", "random_actions", inf, rand))
    return rows
