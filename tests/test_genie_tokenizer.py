"""agents.genie.tokenizer: shapes, causality in time, straight-through gradients, padding, errors,
and a smoke training that beats the mean-frame baseline on held-out sprite clips."""

from __future__ import annotations

import pytest
import torch

from agents.genie.tokenizer import TokenizerConfig, VideoTokenizer, psnr_from_mse


def tiny_config(**overrides) -> TokenizerConfig:
    sizes = dict(
        image_size=16, patch=4, d_model=32, n_layer=1, n_head=2, codebook_size=32,
        latent_dim=8, max_frames=6,
    )  # fmt: skip
    return TokenizerConfig(**{**sizes, **overrides})


PALETTE = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.3, 0.4, 1.0], [1.0, 1.0, 0.2]])
BACKGROUND = torch.tensor([0.1, 0.1, 0.2])


def sprite_videos(
    n: int, t: int, g: torch.Generator, size: int = 16, square: int = 4, grid: int = 2
) -> torch.Tensor:
    """(n, t, 3, size, size) clips of one coloured square moving at a constant velocity (on a
    `grid`-pixel lattice, clamped at the borders) over a plain background."""
    frames = BACKGROUND[None, None, :, None, None].repeat(n, t, 1, size, size)
    pos = grid * torch.randint(0, (size - square) // grid + 1, (n, 2), generator=g)
    vel = grid * torch.randint(-1, 2, (n, 2), generator=g)
    colour = PALETTE[torch.randint(0, len(PALETTE), (n,), generator=g)]
    for k in range(t):
        yx = (pos + k * vel).clamp(0, size - square)
        for i in range(n):
            y, x = yx[i].tolist()
            frames[i, k, :, y : y + square, x : x + square] = colour[i][:, None, None]
    return frames


def test_shapes_and_dtypes() -> None:
    torch.manual_seed(0)
    model = VideoTokenizer(tiny_config())
    assert model.tokens_per_frame == 16
    frames = torch.rand(2, 5, 3, 16, 16)
    recon, codes, vq_loss, metrics = model(frames)
    recon = recon.detach()
    assert recon.shape == frames.shape and recon.dtype == torch.float32
    assert 0.0 <= float(recon.min()) and float(recon.max()) <= 1.0
    assert codes.shape == (2, 5, 16) and codes.dtype == torch.long
    assert vq_loss.dim() == 0 and {"usage", "perplexity", "resets"} <= set(metrics)

    model.eval()
    encoded = model.encode(frames)
    assert encoded.shape == (2, 5, 16) and encoded.dtype == torch.long
    assert not encoded.requires_grad
    torch.testing.assert_close(encoded, codes)
    decoded = model.decode(encoded)
    assert decoded.shape == frames.shape
    torch.testing.assert_close(decoded, model(frames)[0])  # forward = decode(encode)

    uint8 = (frames * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.encode(uint8), model.encode(uint8.float() / 255))
    loss, m = model.compute_loss({"frames": uint8})
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"loss_recon", "psnr", "usage", "perplexity", "resets"} <= set(m)
    assert m["psnr"] == pytest.approx(psnr_from_mse(m["loss_recon"]))


def test_causal_in_time() -> None:
    torch.manual_seed(1)
    model = VideoTokenizer(tiny_config()).eval()
    frames = torch.rand(2, 6, 3, 16, 16)
    changed = frames.clone()
    changed[:, 3:] = torch.rand(2, 3, 3, 16, 16)
    codes, codes_changed = model.encode(frames), model.encode(changed)
    torch.testing.assert_close(codes[:, :3], codes_changed[:, :3])
    assert not torch.equal(codes[:, 3:], codes_changed[:, 3:])
    with torch.no_grad():
        recon, recon_changed = model(frames)[0], model(changed)[0]
    torch.testing.assert_close(recon[:, :3], recon_changed[:, :3])
    # the decoder alone: changing later codes leaves earlier frames unchanged
    other = codes.clone()
    other[:, 4:] = (other[:, 4:] + 1) % model.cfg.codebook_size
    with torch.no_grad():
        torch.testing.assert_close(model.decode(codes)[:, :4], model.decode(other)[:, :4])


def test_gradients_reach_encoder_decoder_and_codebook() -> None:
    torch.manual_seed(2)
    model = VideoTokenizer(tiny_config())
    loss, _ = model.compute_loss({"frames": torch.rand(2, 3, 3, 16, 16)})
    loss.backward()
    named = dict(model.named_parameters())
    for name in ("patch_in.weight", "to_latent.weight", "from_latent.weight", "patch_out.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    encoder_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    decoder_grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert sum(float(g.abs().sum()) for g in encoder_grads) > 0
    assert sum(float(g.abs().sum()) for g in decoder_grads) > 0
    assert model.vq.codebook.grad is not None and model.vq.codebook.grad.abs().sum() > 0

    # the reconstruction loss alone reaches the encoder only through the straight-through path
    model.zero_grad()
    recon, _, _, _ = model(torch.rand(2, 3, 3, 16, 16))
    recon.mean().backward()
    assert model.patch_in.weight.grad.abs().sum() > 0
    assert model.vq.codebook.grad is None or model.vq.codebook.grad.abs().sum() == 0


@pytest.mark.parametrize("padding", ["right", "left"])
def test_frame_mask_excludes_padded_frames(padding: str) -> None:
    torch.manual_seed(3)
    model = VideoTokenizer(tiny_config(reset_after=None))
    frames = torch.rand(2, 4, 3, 16, 16)
    mask = torch.ones(2, 4, dtype=torch.bool)
    pad = [2, 3] if padding == "right" else [0]
    mask[0, pad] = False
    other = frames.clone()
    other[0, pad] = torch.rand(len(pad), 3, 16, 16)
    loss_a, m_a = model.compute_loss({"frames": frames, "frame_mask": mask})
    loss_b, m_b = model.compute_loss({"frames": other, "frame_mask": mask})
    torch.testing.assert_close(loss_a, loss_b)
    assert m_a["loss_recon"] == pytest.approx(m_b["loss_recon"])
    # ...while an unmasked change does move it
    loss_c, _ = model.compute_loss({"frames": other, "frame_mask": torch.ones_like(mask)})
    assert not torch.allclose(loss_a, loss_c)
    # hand check: the reconstruction term is the MSE over the valid frames only
    recon = model(frames, mask)[0]
    expected = (recon - frames).pow(2)[mask].mean()
    assert m_a["loss_recon"] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_bad_sizes_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="patch=5"):
        TokenizerConfig(image_size=32, patch=5)
    model = VideoTokenizer(tiny_config())
    with pytest.raises(ValueError, match=r"expected \(b, t, 3, 16, 16\)"):
        model(torch.rand(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(1, 7, 3, 16, 16))  # longer than max_frames=6


def test_paper_coinrun_sizes() -> None:
    cfg = TokenizerConfig.paper_coinrun()
    assert (cfg.image_size, cfg.patch, cfg.codebook_size, cfg.latent_dim) == (64, 4, 1024, 32)
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.max_frames) == (512, 8, 8, 16)
    assert cfg.tokens_per_frame == 256
    dec = cfg.st_config(decoder=True)
    assert (dec.d_model, dec.n_layer, dec.n_head, dec.causal) == (512, 8, 8, True)


def test_smoke_training_beats_mean_frame_baseline() -> None:
    """250 AdamW steps (lr 1e-3) on 16x16 sprite clips, d 64, one ST block, 64 codes. Held-out
    PSNR over seeds 0-5 (mean-frame baseline ~17 dB): +4.8 to +7.7 dB; seed 0 is +7.7."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train, test = sprite_videos(512, 3, g), sprite_videos(128, 3, g)
    cfg = TokenizerConfig(
        image_size=16, patch=4, d_model=64, n_layer=1, n_head=4, codebook_size=64,
        latent_dim=32, max_frames=3,
    )  # fmt: skip
    model = VideoTokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(250):
        idx = torch.randint(0, len(train), (16,), generator=g)
        loss, metrics = model.compute_loss({"frames": train[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        psnr = psnr_from_mse((model.decode(model.encode(test)) - test).pow(2).mean())
    mean_frame = train.mean(dim=(0, 1), keepdim=True)
    baseline = psnr_from_mse((test - mean_frame).pow(2).mean())
    assert metrics["usage"] > 0.05 and metrics["perplexity"] > 2.0
    print(f"held-out PSNR {psnr:.2f} dB, mean-frame baseline {baseline:.2f} dB")
    assert psnr > baseline + 3.0, (psnr, baseline)
