"""Import/export between :class:`EpisodeStore` and Minari datasets (optional extra).

Minari is the interchange format, not our store: it has no flat step index, so
training reads are ~1000x slower than a memmap (see benchmarks/sampler_speed.py).
Exports use HDF5 with ``jpeg_encoding=False`` so uint8 frames round-trip
exactly, and ``create_dataset_from_buffers`` so no jax is needed.

Minari keeps T+1 observations per episode. On export the extra, final one is
``next_obs[-1]`` when the store has a ``next_obs`` key, else the last ``obs``
repeated (so a consumer that reads ``observations[1:]`` as next observations gets
a duplicated final frame; the dataset metadata records which was done). Our
per-episode metadata travels as a JSON string in each Minari episode's
``icrl_metadata`` attribute, and store attrs in the dataset's ``icrl_attrs``.
Only flat array spaces (Box, Discrete, MultiDiscrete, MultiBinary) are supported.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rl_core.data.store import REQUIRED_KEYS, EpisodeStore

__all__ = ["export_minari", "import_minari"]

_INSTALL_HINT = 'Minari support needs the optional extra: pip install "icrl[minari]"'


def _minari():
    try:
        import minari
        from minari.data_collector.episode_buffer import EpisodeBuffer
    except ImportError as e:  # minari itself, or its undeclared Pillow/h5py imports
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return minari, EpisodeBuffer


def _check_space(space: Any, what: str) -> None:
    import gymnasium as gym

    flat = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
    if not isinstance(space, flat):
        raise ValueError(
            f"{what} {space} cannot be exported to Minari here; supported spaces: "
            "Box, Discrete, MultiDiscrete, MultiBinary"
        )


def export_minari(
    store: EpisodeStore,
    dataset_id: str,
    *,
    observation_space: Any,
    action_space: Any,
    env_id: str | None = None,
) -> Path:
    """Write every episode of ``store`` to a new Minari HDF5 dataset; returns its directory.

    ``env_id`` (a registered gymnasium id) lets Minari recover the environment;
    without it the dataset carries only the spaces. Keys other than the required
    ones and ``next_obs`` have no Minari slot and are dropped with a warning.
    """
    minari, EpisodeBuffer = _minari()
    from minari.storage.datasets_root_dir import get_dataset_path

    _check_space(observation_space, "observation space")
    _check_space(action_space, "action space")
    has_next = "next_obs" in store.schema
    dropped = sorted(set(store.schema) - set(REQUIRED_KEYS) - {"next_obs"})
    if dropped:
        warnings.warn(
            f"export_minari: keys {dropped} have no Minari slot and are dropped", stacklevel=2
        )

    metas = store.metadata
    buffers = []
    for i in range(len(store)):
        ep = store.episode(i)
        final = ep["next_obs"][-1:] if has_next else ep["obs"][-1:]
        seed = metas[i].get("seed")
        buffers.append(
            EpisodeBuffer(
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                observations=np.concatenate([ep["obs"], final]),
                actions=np.asarray(ep["action"]),
                rewards=np.asarray(ep["reward"]),
                terminations=np.asarray(ep["terminated"]),
                truncations=np.asarray(ep["truncated"]),
            )
        )
    path = Path(get_dataset_path(dataset_id))
    existed = path.exists()
    try:
        with warnings.catch_warnings():  # Minari nags about unset author/description/env
            warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None)")
            ds = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_id,
                observation_space=observation_space,
                action_space=action_space,
                data_format="hdf5",
                jpeg_encoding=False,
            )
        ds.storage.update_episode_metadata(
            [{"icrl_metadata": json.dumps(m)} for m in metas], range(len(metas))
        )
        ds.storage.update_metadata(
            {
                "icrl_attrs": json.dumps(store.attrs),
                "icrl_final_obs": "next_obs" if has_next else "repeat_last_obs",
            }
        )
    except BaseException:
        if not existed:  # Minari leaves a half-made dataset behind on failure
            shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _open_dataset(dataset_id_or_path: str | Path):
    minari, _ = _minari()
    from minari.dataset.minari_dataset import MinariDataset

    p = Path(dataset_id_or_path)
    if p.is_dir():
        return MinariDataset(p / "data" if (p / "data").is_dir() else p)
    return minari.load_dataset(str(dataset_id_or_path))


def import_minari(
    dataset_id_or_path: str | Path,
    root: str | Path,
    *,
    with_next_obs: bool = False,
    max_steps_per_shard: int = 100_000,
) -> EpisodeStore:
    """Copy a local Minari dataset (id or directory) into an EpisodeStore at ``root``.

    Episodes get ``source: "minari:<id>"`` (plus any metadata an icrl export
    stored); ``with_next_obs`` also stores ``observations[1:]`` as ``next_obs``.
    Reads through Minari's storage (h5py underneath), one file open for all episodes.
    """
    ds = _open_dataset(dataset_id_or_path)
    _check_space(ds.observation_space, "observation space")
    _check_space(ds.action_space, "action space")
    storage = ds.storage
    raw = storage.metadata
    dataset_id = raw.get("dataset_id", str(dataset_id_or_path))
    source = f"minari:{dataset_id}"
    indices = [int(i) for i in ds.episode_indices]

    store = EpisodeStore(root)
    fresh = len(store) == 0 and not store.attrs
    with store.writer(max_steps_per_shard) as w:
        for ep, em in zip(storage.get_episodes(indices), storage.get_episode_metadata(indices)):
            obs = np.asarray(ep["observations"])
            episode = {
                "obs": obs[:-1],
                "action": np.asarray(ep["actions"]),
                "reward": np.asarray(ep["rewards"]),
                "terminated": np.asarray(ep["terminations"], dtype=bool),
                "truncated": np.asarray(ep["truncations"], dtype=bool),
            }
            if with_next_obs:
                episode["next_obs"] = obs[1:]
            meta = json.loads(em["icrl_metadata"]) if "icrl_metadata" in em else {}
            if "seed" not in meta and em.get("seed") is not None:
                meta["seed"] = int(em["seed"])
            meta["source"] = source
            meta["minari_episode"] = int(ep["id"])
            w.add(episode, meta)
    if fresh:
        attrs = json.loads(raw["icrl_attrs"]) if "icrl_attrs" in raw else {}
        attrs["source"] = source
        store.set_attrs(attrs)
    return store
