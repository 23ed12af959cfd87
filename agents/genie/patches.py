"""Frames <-> patch tokens, shared by Genie's video tokenizer and latent action model.

Both see pixels as non-overlapping p x p patches flattened in raster order (Genie: patch 4 for
the tokenizer, 16 for the latent action model), so a frame of h x w pixels is (h/p)(w/p) tokens
of c p p values each. Shape legend: b batch, t frames, c h w a frame, n tokens, p patch side.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor


def check_patchable(image_size: tuple[int, int], patch: int, where: str = "patch") -> None:
    """A clear error when the frame does not split into whole patches."""
    h, w = image_size
    if patch < 1 or h % patch or w % patch:
        raise ValueError(
            f"{where}={patch}: frames of {h}x{w} pixels must split into whole patches "
            f"(a divisor of both {h} and {w})"
        )


def patchify(frames: Tensor, patch: int) -> Tensor:
    """(b, t, c, h, w) -> (b, t, n, c p p) with n = (h / p)(w / p), patches in raster order."""
    check_patchable(tuple(frames.shape[-2:]), patch)
    return rearrange(frames, "b t c (y p) (x q) -> b t (y x) (c p q)", p=patch, q=patch)


def unpatchify(tokens: Tensor, patch: int, image_size: tuple[int, int], channels: int) -> Tensor:
    """(b, t, n, c p p) -> (b, t, c, h, w), the inverse of :func:`patchify`."""
    h, w = image_size
    return rearrange(
        tokens, "b t (y x) (c p q) -> b t c (y p) (x q)", y=h // patch, x=w // patch, p=patch,
        q=patch, c=channels,
    )  # fmt: skip
