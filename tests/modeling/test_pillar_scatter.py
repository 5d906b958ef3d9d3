"""PillarScatter: features land at canvas[b, :, y, x]; the grid size of a range."""

import pytest
import torch

from d2_pillars.modeling.pillar_scatter import PillarScatter, grid_size_from_range


def test_grid_size_from_range():
    assert grid_size_from_range([-50, -50, -5, 50, 50, 3], [0.25, 0.25, 8]) == (400, 400, 1)
    assert grid_size_from_range([-80, -40, -5, 80, 40, 3], [0.5, 0.25, 8]) == (320, 320, 1)
    with pytest.raises(ValueError, match="whole number"):
        grid_size_from_range([-50, -50, -5, 50, 50, 3], [0.3, 0.3, 8])


def test_scatter_places_features_at_y_x():
    g = torch.Generator().manual_seed(0)
    nx, ny, batch = 5, 3, 2
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 2, 4], [1, 0, 1, 3], [1, 0, 2, 0], [0, 0, 1, 2]])
    feats = torch.randn(len(coords), 4, generator=g, requires_grad=True)
    canvas = PillarScatter(nx=nx, ny=ny)(feats, coords.int(), batch)
    assert canvas.shape == (batch, 4, ny, nx)
    expected = torch.zeros(batch, 4, ny, nx)
    for (b, _, y, x), f in zip(coords.tolist(), feats.detach()):
        expected[b, :, y, x] = f
    torch.testing.assert_close(canvas.detach(), expected, rtol=0, atol=0)
    # non-square grid: H = y, W = x
    assert canvas[1, :, 1, 3].equal(feats[2].detach())
    canvas.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))
