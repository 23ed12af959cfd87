"""agents.genie.patches: patch order and the round trip."""

import pytest
import torch

from agents.genie.patches import patchify, unpatchify


def test_patchify_raster_order_and_round_trip() -> None:
    frames = torch.arange(2 * 3 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 3, 8, 12)
    tokens = patchify(frames, 4)
    assert tokens.shape == (2, 3, 6, 3 * 16)
    # token 1 is the second patch of the first patch row: columns 4..7 of rows 0..3
    torch.testing.assert_close(tokens[0, 0, 1, :16], frames[0, 0, 0, :4, 4:8].reshape(-1))
    torch.testing.assert_close(tokens[0, 0, 3, :16], frames[0, 0, 0, 4:8, :4].reshape(-1))
    torch.testing.assert_close(unpatchify(tokens, 4, (8, 12), 3), frames)
    with pytest.raises(ValueError, match="patch=5"):
        patchify(frames, 5)
