"""Frame/action segments for world models, sampled from a growing episode store (the replay buffer).

Why a separate sampler: world models train on *transitions* (x_t, a_t, x_{t+1}), so a segment of
T steps carries T + 1 frames, the last one being an episode's final observation when the segment
reaches the end. The store keeps `obs` and `next_obs` per step; here each episode is kept once as
L + 1 frames (its observations plus its final next observation), so RAM holds every frame once.

Online agents append episodes every epoch: :meth:`SegmentSampler.update` loads only the episodes
added since the last call. Shape legend: b batch, t time (transitions), h w c a frame.
"""

from __future__ import annotations

import numpy as np

from rl_core.data.store import EpisodeStore

__all__ = ["SegmentSampler"]


class SegmentSampler:
    """Uniform segments of `T` transitions (right-padded past an episode's end, `mask` False).

    Batch keys: ``frames (b, T+1, ...)`` native dtype, ``action (b, T)``, ``reward (b, T) float32``,
    ``end (b, T) bool`` (true termination, not truncation), ``mask (b, T) bool`` (real transition),
    ``frame_mask (b, T+1) bool``. The start step is uniform over all stored transitions, so
    episodes are weighted by their length (Δ-IRIS/IRIS weight episodes by how rarely they were
    sampled; uniform over steps is the DreamerV3/DIAMOND-style choice).
    """

    def __init__(self, store: EpisodeStore | None = None, *, episodes_from: int = 0) -> None:
        self._frames: list[np.ndarray] = []
        self._action: list[np.ndarray] = []
        self._reward: list[np.ndarray] = []
        self._end: list[np.ndarray] = []
        self.loaded = episodes_from  # store episodes [0, loaded) are in (or deliberately skipped)
        self._built = False
        if store is not None:
            self.update(store)

    # ------------------------------------------------------------------ loading

    def update(self, store: EpisodeStore) -> int:
        """Load the episodes the store gained since the last call; returns how many."""
        store.refresh()
        new = range(self.loaded, len(store))
        for i in new:
            ep = store.episode(i)
            if "next_obs" not in ep:
                raise KeyError(
                    f"episode {i} of {store.root} has no 'next_obs': world-model data must be "
                    "recorded with rollout(..., record_next_obs=True)"
                )
            self._frames.append(np.concatenate([ep["obs"], ep["next_obs"][-1:]]))
            self._action.append(np.array(ep["action"]))
            self._reward.append(np.asarray(ep["reward"], dtype=np.float32))
            self._end.append(np.asarray(ep["terminated"], dtype=bool))
        self.loaded = len(store)
        if len(new):
            self._built = False
        return len(new)

    def add_episode(
        self, frames: np.ndarray, action: np.ndarray, reward: np.ndarray, end: np.ndarray
    ) -> None:
        """Add one episode directly (`frames` has one more entry than `action`)."""
        if len(frames) != len(action) + 1:
            raise ValueError(f"{len(frames)} frames for {len(action)} actions: need actions + 1")
        self._frames.append(np.asarray(frames))
        self._action.append(np.asarray(action))
        self._reward.append(np.asarray(reward, dtype=np.float32))
        self._end.append(np.asarray(end, dtype=bool))
        self._built = False

    def _build(self) -> None:
        if self._built:
            return
        if not self._action:
            raise ValueError("SegmentSampler is empty: collect episodes first")
        lengths = np.array([len(a) for a in self._action], dtype=np.int64)
        self.lengths = lengths
        self.num_episodes = len(lengths)
        self.num_steps = int(lengths.sum())
        self.step_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.frame_start = self.step_start + np.arange(len(lengths))  # L + 1 frames per episode
        pad = np.zeros((1, *self._frames[0].shape[1:]), dtype=self._frames[0].dtype)
        self.frames = np.concatenate([*self._frames, pad])  # last row = padding
        self.action = np.concatenate([*self._action, np.zeros_like(self._action[0][:1])])
        self.reward = np.concatenate([*self._reward, np.zeros(1, np.float32)])
        self.end = np.concatenate([*self._end, np.zeros(1, bool)])
        self.episode_of_step = np.repeat(np.arange(len(lengths)), lengths)
        self._built = True

    # ------------------------------------------------------------------ sampling

    def _gather(
        self, episode: np.ndarray, local: np.ndarray, horizon: int
    ) -> dict[str, np.ndarray]:
        """Segments of `horizon` transitions starting at step `local` of `episode` (b,); steps
        before the episode (negative `local`) or after its end are padding."""
        j = local[:, None] + np.arange(horizon + 1)[None, :]  # (b, T+1) local frame index
        length = self.lengths[episode][:, None]
        frame_mask = (j >= 0) & (j <= length)
        mask = (j[:, :-1] >= 0) & (j[:, :-1] < length)
        pad_frame, pad_step = len(self.frames) - 1, self.num_steps
        f_idx = np.where(frame_mask, self.frame_start[episode][:, None] + j, pad_frame)
        s_idx = np.where(mask, self.step_start[episode][:, None] + j[:, :-1], pad_step)
        return {
            "frames": self.frames.take(f_idx, axis=0),
            "action": self.action.take(s_idx, axis=0),
            "reward": self.reward.take(s_idx, axis=0),
            "end": self.end.take(s_idx, axis=0),
            "mask": mask,
            "frame_mask": frame_mask,
        }

    def sample(
        self, batch_size: int, horizon: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Segments whose first transition is uniform over all stored transitions."""
        self._build()
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        step = rng.integers(0, self.num_steps, size=batch_size)
        episode = self.episode_of_step[step]
        return self._gather(episode, step - self.step_start[episode], horizon)

    def sample_left_padded(
        self, batch_size: int, horizon: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Denoiser segments placed as the official `BatchSampler` (padding only before the start).

        A step t is drawn uniformly over the stored transitions, the segment of `horizon`
        transitions ends at min(episode length, t + 1 + U{0..horizon-1}), and steps before the
        episode start are padding: `mask` False, action 0, frames with `frame_mask` False (the
        denoiser feeds them as the grey padding frame). Keys as :meth:`SegmentSampler.sample`.
        So the first frames of an episode are targets too, conditioned on padding, as at the start
        of the official imagination when the burn-in is shorter than L.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self._build()
        step = rng.integers(0, self.num_steps, size=batch_size)
        episode = self.episode_of_step[step]
        length = self.lengths[episode]
        local = step - self.step_start[episode]
        stop = np.minimum(length, local + 1 + rng.integers(0, horizon, size=batch_size))
        return self._gather(episode, stop - horizon, horizon)  # start < 0: left padding

    def sample_context(
        self, batch_size: int, burn_in: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Starting points for imagination: `burn_in` real transitions, all inside one episode,
        and the frame after them (the frame imagination starts from), uniform over such windows.

        With `burn_in = 0` every stored frame but the final ones can start. Episodes with fewer
        than `burn_in` transitions cannot give a window; it is an error if none can.
        """
        self._build()
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        starts = np.maximum(self.lengths - burn_in, 0)  # windows per episode (last frame < L)
        if starts.sum() == 0:
            raise ValueError(
                f"no episode has more than burn_in={burn_in} transitions: lower burn_in"
            )
        cum = np.cumsum(starts)
        pick = rng.integers(0, cum[-1], size=batch_size)
        episode = np.searchsorted(cum, pick, side="right")
        local = pick - (cum[episode] - starts[episode])
        if burn_in == 0:
            batch = self._gather(episode, local, 1)
            return {
                "frames": batch["frames"][:, :1],
                "action": batch["action"][:, :0],
                "mask": batch["mask"][:, :0],
            }
        batch = self._gather(episode, local, burn_in)
        return {"frames": batch["frames"], "action": batch["action"], "mask": batch["mask"]}

    def windows(self, horizon: int) -> dict[str, np.ndarray]:
        """Every segment of `horizon` transitions lying inside one episode, in store order: to
        evaluate on all held-out data instead of a sample. Keys as :meth:`sample` (all valid)."""
        self._build()
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        count = np.maximum(self.lengths - horizon + 1, 0)
        if count.sum() == 0:
            raise ValueError(f"no episode has {horizon} transitions: lower the horizon")
        episode = np.repeat(np.arange(self.num_episodes), count)
        local = np.concatenate([np.arange(c) for c in count])
        return self._gather(episode, local, horizon)

    def __len__(self) -> int:
        return len(self._action)

    @property
    def total_steps(self) -> int:
        return int(sum(len(a) for a in self._action))
