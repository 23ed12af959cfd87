"""rl_core.imagination_eval: open-loop rollouts through the ImaginedEnv face, and the strips.

The world model is the exact corridor simulator of test_model_based, so a correct open loop
has zero error, and an action shifted by one step does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rl_core.data.segments import SegmentSampler
from rl_core.imagination_eval import (
    open_loop,
    psnr,
    rollout_error_curve,
    write_strip_gif,
    write_strip_png,
)
from tests.rl_core.test_model_based import ExactCorridorModel, _corridor_store


def _windows(tmp_path: Path, transitions: int) -> dict[str, torch.Tensor]:
    sampler = SegmentSampler(_corridor_store(tmp_path, episodes=8))
    w = sampler.windows(transitions)
    frames = torch.as_tensor(w["frames"]).movedim(-1, -3)  # uint8 (b, t+1, c, h, w)
    return {"frames": frames, "action": torch.as_tensor(w["action"]),
            "reward": torch.as_tensor(w["reward"]), "end": torch.as_tensor(w["end"]),
            "mask": torch.as_tensor(w["mask"])}  # fmt: skip


class ShiftedActions(ExactCorridorModel):
    """The exact model fed the previous step's action: a one-step misalignment."""

    def reset(self, frames, actions):
        self.prev = actions[:, -1]
        return super().reset(frames, actions)

    def step(self, actions):
        prev, self.prev = self.prev, actions
        return super().step(prev)


def test_open_loop_of_an_exact_model_matches_reality(tmp_path: Path) -> None:
    batch = _windows(tmp_path, 4)
    roll = open_loop(ExactCorridorModel(), batch, horizon=3)
    n = len(batch["action"])
    assert roll["imagined"].shape == roll["real"].shape == (n, 4, 3, 8, 8)
    torch.testing.assert_close(roll["imagined"], roll["real"])
    assert torch.equal(roll["end"], roll["real_end"][:, :3].bool())
    torch.testing.assert_close(roll["reward"], roll["real_reward"].float())
    curve = rollout_error_curve(ExactCorridorModel(), batch, horizon=3)
    assert curve["model"].shape == (3,) and curve["model"].abs().max() == 0
    assert curve["copy_last"].min() > 0  # the agent moves every step
    shifted = rollout_error_curve(ShiftedActions(), batch, horizon=3)
    assert shifted["model"].min() > 0
    with pytest.raises(ValueError, match="horizon=5"):
        open_loop(ExactCorridorModel(), batch, horizon=5)


def test_psnr_and_strips(tmp_path: Path) -> None:
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)
    real = torch.rand(6, 3, 8, 8)
    grey = torch.rand(6, 1, 8, 8)  # single-channel frames are shown as RGB
    png = write_strip_png({"real": real, "imagined": grey}, tmp_path / "s.png", every=2)
    assert Image.open(png).size[0] > Image.open(png).size[1]  # a wide strip
    gif = write_strip_gif({"real": real, "imagined": grey}, tmp_path / "s.gif", scale=2)
    im = Image.open(gif)
    assert im.n_frames == 6 and im.size == (2 * 16 + 4, 16 + 12)
    first = np.asarray(im.convert("RGB"))[12:, :16]  # the real frame 0, upscaled x2
    expected = (real[0].clamp(0, 1) * 255).round().byte().movedim(0, -1).numpy()
    assert np.abs(first[::2, ::2].astype(int) - expected.astype(int)).mean() < 12  # GIF palette
