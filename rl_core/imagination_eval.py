"""Judge any world model through its `ImaginedEnv` face: open-loop rollouts with the real
actions, their error against the real frames, and pictures of both side by side.

Why here: Δ-IRIS, DIAMOND (and any later world model) expose the same batched env protocol
(:class:`rl_core.actor_critic.ImaginedEnv`: `reset(frames, actions)`, `step(actions)`), so one
set of measurements compares them on identical held-out windows, and researchers look at one
kind of strip whatever the model. Window batches are `SegmentSampler` batches as tensors (frames
(b, t+1, c, h, w) float in [0, 1] or uint8); shape legend: b batch, t time, H imagined steps,
c h w a frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rl_core.actor_critic import ImaginedEnv
from rl_core.nn.convnet import as_float_frames

__all__ = ["open_loop", "psnr", "rollout_error_curve", "write_strip_gif", "write_strip_png"]


def psnr(pred: Tensor, target: Tensor) -> float:
    """10 log10(1 / MSE) over everything, frames in [0, 1] (MSE floored at 1e-10)."""
    mse = (pred.float() - target.float()).pow(2).mean().clamp_min(1e-10)
    return float(-10.0 * math.log10(mse.item()))


def _valid_rows(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    frames = as_float_frames(batch["frames"])
    actions = batch["action"].long()
    if "mask" in batch:
        rows = batch["mask"].bool().all(dim=1)
        if not bool(rows.any()):
            raise ValueError("the windows need at least one row whose transitions are all valid")
        frames, actions = frames[rows], actions[rows]
    return frames, actions


@torch.no_grad()
def open_loop(env: ImaginedEnv, batch: Mapping[str, Tensor], horizon: int) -> dict[str, Tensor]:
    """Burn in on the first t - `horizon` transitions of each window, then imagine `horizon`
    steps fed with the real actions (the model's own frames go back in).

    `batch`: frames (b, t+1, ...), action (b, t), optional mask (b, t) (rows with a padded
    transition are dropped). Returns, on the CPU: `imagined` and `real` (n, H+1, c, h, w) (index
    0 is the last burn-in frame, shared), `reward`/`end` (n, H) predicted and `real_reward`/
    `real_end` (n, H) when the batch has them."""
    frames, actions = _valid_rows(batch)
    t = actions.shape[1]
    if not 1 <= horizon <= t:
        raise ValueError(f"horizon={horizon} must be in [1, {t}] (the windows' transitions)")
    start = t - horizon
    current = env.reset(frames[:, : start + 1], actions[:, :start])
    imagined, rewards, ends = [current.float().cpu()], [], []
    for k in range(horizon):
        current, reward, end = env.step(actions[:, start + k])
        imagined.append(current.float().cpu())
        rewards.append(reward.float().cpu())
        ends.append(end.bool().cpu())
    out = {
        "imagined": torch.stack(imagined, 1),
        "real": frames[:, start:].float().cpu(),
        "reward": torch.stack(rewards, 1),
        "end": torch.stack(ends, 1),
    }
    if "mask" in batch:
        rows = batch["mask"].bool().all(dim=1)
        for key in ("reward", "end"):
            if key in batch:
                out[f"real_{key}"] = batch[key][rows][:, start:].cpu()
    return out


def rollout_error_curve(
    env: ImaginedEnv, batch: Mapping[str, Tensor], horizon: int
) -> dict[str, Tensor]:
    """Mean absolute pixel error (in [0, 1] units) of each step of a `horizon`-step open-loop
    rollout with the real actions, and of copying the starting frame: {"model": (H,),
    "copy_last": (H,)} on the CPU."""
    roll = open_loop(env, batch, horizon)
    real, imagined = roll["real"], roll["imagined"]
    model = (imagined[:, 1:] - real[:, 1:]).abs().mean(dim=(0, 2, 3, 4))
    copy = (real[:, :1] - real[:, 1:]).abs().mean(dim=(0, 2, 3, 4))
    return {"model": model, "copy_last": copy}


def _to_uint8_hwc(frames: Tensor | np.ndarray) -> np.ndarray:
    """(..., c, h, w) float in [0, 1] -> (..., h, w, 3) uint8 (grey frames repeated to RGB)."""
    x = torch.as_tensor(frames).float().clamp(0, 1).mul(255).round().to(torch.uint8)
    x = x.movedim(-3, -1).numpy()
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def write_strip_png(
    rows: Mapping[str, Tensor], path: Path | str, *, every: int = 1, title: str = ""
) -> Path:
    """A grid image: one labelled row per entry of `rows` (name -> frames (H+1, c, h, w) in
    [0, 1]), the columns steps 0, every, 2 every, ..., labelled with their step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rows)
    n_steps = min(len(rows[n]) for n in names)
    cols = list(range(0, n_steps, max(every, 1)))
    fig = Figure(figsize=(1.0 * len(cols) + 1.2, 1.05 * len(names) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), len(cols), squeeze=False)
    for i, name in enumerate(names):
        images = _to_uint8_hwc(rows[name])
        for j, step in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(images[step], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={step}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_strip_gif(
    rows: Mapping[str, Tensor], path: Path | str, *, scale: int = 4, ms_per_frame: int = 200
) -> Path:
    """An animated GIF: at each step the frames of every entry of `rows` side by side (left to
    right in order, each labelled), nearest-neighbour upscaled by `scale`."""
    from PIL import Image, ImageDraw

    names = list(rows)
    n_steps = min(len(rows[n]) for n in names)
    images = [_to_uint8_hwc(rows[n][:n_steps]) for n in names]
    h, w = images[0].shape[1:3]
    gap, label_h = 4, 12
    width = len(names) * w * scale + (len(names) - 1) * gap
    frames = []
    for t in range(n_steps):
        canvas = Image.new("RGB", (width, h * scale + label_h), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, (name, seq) in enumerate(zip(names, images, strict=True)):
            x = i * (w * scale + gap)
            tile = Image.fromarray(seq[t]).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (x, label_h))
            draw.text((x + 2, 0), f"{name} t={t}", fill=(0, 0, 0))
        frames.append(canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path
