"""DIAMOND imagination: the denoiser + reward/end model as a batched environment of pixel frames.

Why this shape (official `src/envs/world_model_env.py`): the denoiser needs the last L frames and
actions, the reward/end model an LSTM state, so the environment keeps
  * a frame buffer (b, L, c, h, w) and an action buffer (b, L) aligned with it (action i was
    taken at frame i; the last slot is filled by `step`);
  * the reward/end LSTM state.
`reset` loads them from real burn-in data: the last L frames (a shorter burn-in is padded at
the front with the grey padding frame and action 0, as the official training segments at an
episode start) and the LSTM run over the burn-in transitions. `step(a)` writes a into the last
action slot, samples x_{t+1} with the diffusion sampler (`n_steps` Euler steps by default,
8-bit frames), classifies (x_t, a, x_{t+1}) with the reward/end model (sampled classes, as
the official, or argmax), and rolls both buffers by one.

Everything runs under no_grad on the models' device and never touches their train/eval mode
(neither model has dropout or batch statistics). A `torch.Generator` seeded by `seed` drives
every random draw, so a fixed seed replays the same imagined trajectories.

Shape legend: b batch, t burn-in transitions, l past frames (L), c h w a frame.

Deviations from the official code (eloialonso/diamond):
- The framework's env protocol hands over t burn-in transitions (t + 1 frames). The
  denoiser's buffer is the last L frames and their actions, the last slot filled by `step`;
  burn-ins shorter than L − 1 are padded in front with the grey frame and action 0 (as the
  training segments at an episode start). The reward/end LSTM runs over all t transitions.
  With t = L − 1 = 3 this is exactly the official initial condition (4 frames, 3 transitions
  of LSTM burn-in). The shared `sample_context` gives fully valid windows only, so imagination
  never starts in an episode's first t steps (official: its 4-frame segments may be padded).
- Horizon, truncation and what happens after an imagined termination belong to
  `rl_core.actor_critic.ImaginationLearner` (official: dead imagined envs are reset with new
  initial conditions mid-rollout).
- `sample_reward_end=False` takes argmax classes (official: always sampled).
- No `torch.compile` of the imagination step (the agent may add it on GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from agents.diamond.denoiser import DiamondDenoiser, as_float_frames
from agents.diamond.reward_end import LSTMState, RewardEndModel

PAD_FRAME_VALUE = 0.5  # the official padding frame: 0 in [-1, 1], mid-grey in [0, 1]


class DiamondImagination:
    """`reset(frames, actions) -> frame`, `step(actions) -> (next_frame, reward, end)`.

    Not an `nn.Module`: it borrows the denoiser and the reward/end model (owned, trained and
    saved by the agent) and keeps only the imagination state.
    """

    def __init__(
        self,
        denoiser: DiamondDenoiser,
        reward_end: RewardEndModel,
        n_steps: int | None = None,
        method: str | None = None,
        sample_reward_end: bool = True,
        seed: int | None = None,
    ) -> None:
        if denoiser.cfg.num_actions != reward_end.cfg.num_actions:
            raise ValueError(
                f"denoiser num_actions={denoiser.cfg.num_actions} != reward/end model "
                f"num_actions={reward_end.cfg.num_actions}"
            )
        self.denoiser = denoiser
        self.reward_end = reward_end
        self.n_steps = n_steps  # None: the denoiser's sampler config (3)
        self.method = method  # None: the denoiser's sampler config ("euler")
        self.sample_reward_end = sample_reward_end  # False: argmax classes
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.frames: Tensor | None = None  # (b l c h w) in [0, 1]
        self.actions: Tensor | None = None  # (b l)
        self.state: LSTMState | None = None

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def context(self) -> int:
        return self.denoiser.cfg.context

    def manual_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _follow_device(self) -> None:
        """The models were moved (e.g. to CUDA after `build`): draw the noise there too, from a
        generator seeded by the old one (so a fixed seed still replays the same draws)."""
        g, dev = self.generator.device, self.device
        if g.type != dev.type or (g.index or 0) != (dev.index or 0):  # "cuda" is "cuda:0"
            seed = int(torch.randint(2**62, (1,), generator=self.generator, device=g).item())
            self.generator = torch.Generator(device=dev)
            self.generator.manual_seed(seed)

    @torch.no_grad()
    def reset(self, frames: Tensor, actions: Tensor) -> Tensor:
        """Burn in on real frames (b, t+1, c, h, w) and actions (b, t), t >= 0, all valid.

        Returns the current frame frames[:, -1] (b c h w) as float in [0, 1]."""
        self._follow_device()
        frames = as_float_frames(frames.to(self.device))
        actions = actions.to(self.device).long()
        b, t = actions.shape
        if frames.ndim != 5 or frames.shape[:2] != (b, t + 1):
            raise ValueError(
                f"frames {tuple(frames.shape)} must be (b, t+1, c, h, w) for actions (b, t) = "
                f"{(b, t)}"
            )
        L = self.context
        buf = frames[:, -L:]
        if buf.shape[1] < L:
            pad = torch.full_like(frames[:, :1], PAD_FRAME_VALUE).expand(
                -1, L - buf.shape[1], -1, -1, -1
            )
            buf = torch.cat([pad, buf], dim=1)
        past = actions[:, max(0, t - (L - 1)) :]  # actions taken at the buffer's frames but last
        act = actions.new_zeros(b, L)
        if past.shape[1]:
            act[:, L - 1 - past.shape[1] : L - 1] = past
        self.frames, self.actions = buf.clone(), act
        self.state = self.reward_end.burn_in(frames, actions)
        return self.frames[:, -1]

    def _classes(self, logits: Tensor) -> Tensor:
        if not self.sample_reward_end:
            return logits.argmax(-1)
        probs = logits.float().softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    @torch.no_grad()
    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """actions (b,) long -> next frame (b c h w) in [0, 1], reward (b,) in {-1, 0, 1}, end (b,)
        bool."""
        if self.frames is None or self.actions is None:
            raise RuntimeError("call reset() before step()")
        actions = actions.to(self.device).long()
        self.actions[:, -1] = actions
        nxt = self.denoiser.sample_next(
            self.frames, self.actions, self.n_steps, self.method, generator=self.generator
        )
        logits_rew, logits_end, self.state = self.reward_end.predict(
            self.frames[:, -1], actions, nxt, self.state
        )
        reward = self._classes(logits_rew).float() - 1.0
        end = self._classes(logits_end).bool()
        self.frames = torch.cat([self.frames[:, 1:], nxt[:, None]], dim=1)
        self.actions = torch.cat([self.actions[:, 1:], torch.zeros_like(actions)[:, None]], dim=1)
        return nxt, reward, end
