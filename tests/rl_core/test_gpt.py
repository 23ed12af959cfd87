"""GPT + KVCache: incremental decoding must reproduce the full forward it stands in for."""

from __future__ import annotations

import pytest
import torch

from rl_core.nn import GPT, GPTConfig
from rl_core.nn.gpt import causal_mask

ATOL = 1e-5


def make_gpt(pos: str = "rope", n_layer: int = 2, max_len: int = 64) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(d_model=32, n_layer=n_layer, n_head=4, dropout=0.0, max_len=max_len, pos=pos)
    return GPT(cfg).eval()


def tokens(b: int = 3, n: int = 20, d: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def decode(model: GPT, x: torch.Tensor, chunks: list[int], window: int | None = None):
    """Feed `x` through one cache in pieces of the given sizes; concatenated outputs."""
    cache = model.new_cache(window)
    outs, start = [], 0
    for size in chunks:
        outs.append(model(x[:, start : start + size], cache=cache))
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), cache


def band_mask(n: int, window: int) -> torch.Tensor:
    """Sliding-window causal mask: token i sees tokens i-window+1 .. i."""
    i = torch.arange(n)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


@pytest.mark.parametrize("pos", ["rope", "learned", "none"])
@pytest.mark.parametrize("chunks", [[1] * 20, [3, 1, 5, 2, 4, 5], [20]])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(pos, chunks):
    model = make_gpt(pos)
    x = tokens()
    full = model(x)
    cached, cache = decode(model, x, chunks)
    assert cached.shape == full.shape
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    assert cache.offset == 20 and len(cache) == 20


@pytest.mark.parametrize("window", [1, 5, 8])
@torch.no_grad()
def test_rolling_window_equals_reencoding_last_window_with_one_layer(window):
    """The window claim, token by token: output t == full forward over tokens t-W+1..t."""
    model = make_gpt("rope", n_layer=1)
    x = tokens(n=24)
    cached, cache = decode(model, x, [1] * 24, window)
    assert len(cache) == window and cache.offset == 24
    for t in range(24):
        ref = model(x[:, max(0, t - window + 1) : t + 1])[:, -1]
        torch.testing.assert_close(cached[:, t], ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_rolling_window_chunks_see_the_window_ending_at_the_chunk():
    """A chunk's queries all see the last W tokens up to the chunk's end (one layer)."""
    model, window = make_gpt("rope", n_layer=1), 8
    x = tokens(n=24)
    chunks = [3, 5, 3, 3, 4, 6]
    cached, _ = decode(model, x, chunks, window)
    end = 0
    for size in chunks:
        end += size
        ref = model(x[:, max(0, end - window) : end])[:, -size:]
        torch.testing.assert_close(cached[:, end - size : end], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos", ["rope", "none"])
@torch.no_grad()
def test_rolling_window_equals_band_masked_forward_at_any_depth(pos):
    """What a rolling cache computes with several layers: sliding-window attention."""
    model, window = make_gpt(pos, n_layer=3), 6
    x = tokens(n=24)
    cached, _ = decode(model, x, [1] * 24, window)
    ref = model(x, attn_mask=band_mask(24, window))
    torch.testing.assert_close(cached, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_chunk_longer_than_window_is_refused():
    model = make_gpt()
    cache = model.new_cache(4)
    with pytest.raises(ValueError, match="exceed the cache window of 4"):
        model(tokens(n=5), cache=cache)


@torch.no_grad()
def test_select_keeps_rows():
    model = make_gpt("rope")
    x = tokens(b=4, n=12)
    _, cache = decode(model, x[:, :7], [4, 3])
    rows = torch.tensor([2, 0])
    cache.select(rows)
    assert all(k.shape[0] == 2 for k in cache.keys) and len(cache) == 7 and cache.offset == 7
    rest = torch.cat([model(x[rows, 7 + i : 8 + i], cache=cache) for i in range(5)], dim=1)
    torch.testing.assert_close(rest, model(x[rows])[:, 7:], atol=ATOL, rtol=0)


@torch.no_grad()
def test_learned_positions_beyond_max_len_raise():
    model = make_gpt("learned", max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        model(tokens(n=9))
    cache = model.new_cache(4)  # a rolling cache does not make learned positions relative
    for i in range(8):
        model(tokens(n=1, seed=i), cache=cache)
    with pytest.raises(ValueError, match="max_len=8"):
        model(tokens(n=1), cache=cache)


def test_causal_mask_with_cached_prefix():
    assert causal_mask(2, 5, torch.device("cpu")).tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"d_model": 30}, "divisible"), ({"pos": "alibi"}, "pos")]
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{"d_model": 32, "n_head": 4, **kwargs})
