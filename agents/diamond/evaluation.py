"""Held-out metrics of the DIAMOND pieces, each against a trivial baseline (reference §6.4).

Every row function returns `{metric, model, baseline, value_model, value_baseline}` of plain
floats, the layout of `results/<agent>/heldout.csv` (the caller adds the `env` column), as
`agents.delta_iris.evaluation`:

* denoiser: the EDM denoising loss vs the same loss of a zero network output (D = c_skip x_σ,
  the loss of the zero-initialised model, E[target²]), on the same σ and noise draws;
  next-frame PSNR of sampled frames vs copying the last frame; action sensitivity, PSNR with the
  true action minus PSNR with a random other action from the same initial noise (baseline 0);
* imagination: mean absolute pixel error of an autoregressive rollout with the true actions vs
  copying the starting frame (`rollout_error_curve` gives the whole per-step curve for plots);
* reward/end model: recall on non-zero rewards (sign classes) and on terminations vs chance
  (1/3 and 1/2), and reward balanced accuracy vs chance, teacher-forced over segments.

PSNR here is 10 log10(1 / MSE) of the batch's mean squared error in [0, 1] units (a per-frame
mean would be dominated by frames copied exactly, whose PSNR is infinite).
Shape legend: b batch, t time, l past frames (L), c h w a frame.

Official code comparison (eloialonso/diamond): Not in the official code (which logs losses, confusion matrices and denoising trajectories):
denoising loss vs a zero network output, next-frame PSNR vs copy-last, action sensitivity
  (PSNR with the true action minus PSNR with a random other action from the same noise),
  autoregressive rollout error curve vs copying the start frame, reward non-zero recall,
  balanced accuracy and termination recall vs chance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agents.diamond.denoiser import (
    DiamondDenoiser,
    as_float_frames,
    pad_invalid_frames,
    to_model_space,
)
from agents.diamond.reward_end import RewardEndModel
from agents.world_model_common import metric_row
from rl_core.imagination_eval import psnr
from rl_core.nn.edm import add_noise, edm_target, precondition, sample_sigma_train


def denoiser_windows(batch: dict[str, Tensor], context: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every (L past frames, L past actions, next frame) window of a segment batch whose target
    and last past frame are real: past (n l c h w) in [0, 1] (padding frames grey), actions
    (n l), target (n c h w)."""
    frames = as_float_frames(batch["frames"])
    frame_mask = batch.get("frame_mask")
    if frame_mask is None:  # right-padded segments: frame j is real iff transition j-1 is
        m = batch["mask"].bool()
        frame_mask = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)
    frame_mask = frame_mask.bool().to(frames.device)
    frames = (pad_invalid_frames(frames * 2 - 1, frame_mask) + 1) / 2
    actions = batch["action"].long()
    t = actions.shape[1]
    past, acts, targets = [], [], []
    for j in range(context, t + 1):
        ok = frame_mask[:, j] & frame_mask[:, j - 1]
        past.append(frames[ok, j - context : j])
        acts.append(actions[ok, j - context : j])
        targets.append(frames[ok, j])
    if not past or sum(len(p) for p in past) == 0:
        raise ValueError(f"no valid window of {context} past frames + a target in the batch")
    return torch.cat(past), torch.cat(acts), torch.cat(targets)


def other_actions(actions: Tensor, num_actions: int, seed: int = 0) -> Tensor:
    """A uniformly random action different from each of `actions` (any shape)."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_actions, actions.shape, generator=g)
    return (actions + shift.to(actions.device)) % num_actions


@torch.no_grad()
def denoiser_metrics(
    denoiser: DiamondDenoiser,
    batch: dict[str, Tensor],
    n_steps: int | None = None,
    method: str | None = None,
    seed: int = 0,
) -> list[dict]:
    """Denoising loss vs a zero output; next-frame PSNR vs copy-last; action sensitivity."""
    cfg, edm = denoiser.cfg, denoiser.cfg.edm
    if cfg.num_actions < 2:
        raise ValueError("action sensitivity needs at least 2 actions")
    device = denoiser.device
    past, actions, target = (x.to(device) for x in denoiser_windows(batch, cfg.context))
    n = target.shape[0]
    g = torch.Generator(device=device).manual_seed(seed)
    x0 = to_model_space(target)
    sigma = sample_sigma_train(n, edm, g)
    noisy = add_noise(x0, sigma, edm.offset, g)
    c_in, c_out, c_skip, c_noise = precondition(sigma, edm.sigma_data, edm.offset)
    f = denoiser.network(
        noisy * c_in[:, None, None, None],
        c_noise,
        to_model_space(past) / edm.sigma_data,
        actions,
    )
    tgt = edm_target(x0, noisy, c_skip, c_out)
    loss, loss_zero = (f - tgt).pow(2).mean(), tgt.pow(2).mean()

    sample_seed = seed + 1
    g.manual_seed(sample_seed)
    pred = denoiser.sample_next(past, actions, n_steps, method, generator=g)
    other = actions.clone()
    other[:, -1] = other_actions(actions[:, -1], cfg.num_actions, seed)
    g.manual_seed(sample_seed)  # the same initial noise: only the action differs
    pred_other = denoiser.sample_next(past, other, n_steps, method, generator=g)
    psnr_true, psnr_other = psnr(pred, target), psnr(pred_other, target)
    return [
        metric_row("denoising_loss", "denoiser", "zero_output", loss, loss_zero),
        metric_row(
            "next_frame_psnr_db", "denoiser", "copy_last", psnr_true, psnr(past[:, -1], target)
        ),
        metric_row("action_sensitivity_psnr_db", "denoiser", "zero", psnr_true - psnr_other, 0.0),
    ]


@torch.no_grad()
def rollout_rows(curve: dict[str, Tensor]) -> list[dict]:
    """Rows of a rollout curve: the first step, the last step and the mean over steps."""
    h = len(curve["model"])
    rows = [
        metric_row(
            "rollout_mae_k1", "imagination", "copy_last", curve["model"][0], curve["copy_last"][0]
        )
    ]
    if h > 1:
        rows.append(
            metric_row(
                f"rollout_mae_k{h}",
                "imagination",
                "copy_last",
                curve["model"][-1],
                curve["copy_last"][-1],
            )
        )
    rows.append(
        metric_row(
            f"rollout_mae_mean_k1-{h}",
            "imagination",
            "copy_last",
            curve["model"].mean(),
            curve["copy_last"].mean(),
        )
    )
    return rows


@torch.no_grad()
def reward_end_metrics(model: RewardEndModel, batch: dict[str, Tensor]) -> list[dict]:
    """Teacher-forced over the batch's segments (LSTM from zeros at each segment start), over
    valid steps: recall on non-zero reward signs vs 1/3, reward balanced accuracy vs 1/(classes
    present), termination recall vs 1/2. Rows whose class is absent from the batch are left out."""
    device = model.device
    batch = {k: v.to(device) for k, v in batch.items()}
    valid = batch["mask"].bool()
    logits_rew, logits_end = model.segment_logits(batch)
    target_rew = batch["reward"][valid].sign().long() + 1
    target_end = batch["end"][valid].long()
    pred_rew, pred_end = logits_rew[valid].argmax(-1), logits_end[valid].argmax(-1)
    rows = []
    nonzero = target_rew != 1
    if bool(nonzero.any()):
        recall = (pred_rew[nonzero] == target_rew[nonzero]).float().mean()
        rows.append(metric_row("reward_nonzero_recall", "reward_end", "chance", recall, 1 / 3))
    present = target_rew.unique()
    recalls = [(pred_rew[target_rew == c] == c).float().mean() for c in present]
    rows.append(
        metric_row(
            "reward_balanced_accuracy",
            "reward_end",
            "chance",
            torch.stack(recalls).mean(),
            1.0 / len(present),
        )
    )
    if bool(target_end.any()):
        recall = (pred_end[target_end == 1] == 1).float().mean()
        rows.append(metric_row("end_recall", "reward_end", "chance", recall, 0.5))
    return rows
