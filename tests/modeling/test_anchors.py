import numpy as np
import pytest
import torch

from detectron2.config import get_cfg

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.anchors import Anchor3DGenerator


def _expected(rng, sizes, rots, h, w, scale):
    """Brute-force anchor list in (y, x, size, rot) order, one Python loop per anchor."""
    out = []
    for iy in range(h):
        for ix in range(w):
            for s, size in enumerate(sizes):
                r6 = rng[s] if len(rng) > 1 else rng[0]
                x = r6[0] + (ix + 0.5) * (r6[3] - r6[0]) / w
                y = r6[1] + (iy + 0.5) * (r6[4] - r6[1]) / h
                l, wd, ht = (v * scale for v in size)
                z = (r6[2] + r6[5]) / 2 + ht / 2
                for rot in rots:
                    out.append([x, y, z, l, wd, ht, rot])
    return np.array(out, dtype=np.float64)


def test_shared_range_multi_level():
    sizes = [[2.5981, 0.8660, 1.0], [0.4, 0.4, 1.0]]
    rng = [[-8.0, -4.0, -1.8, 8.0, 4.0, -1.8]]
    rots = [0.0, 1.57]
    gen = Anchor3DGenerator(sizes=sizes, ranges=rng, rotations=rots, level_scales=[1.0, 2.0])
    assert gen.num_anchors_per_location == 4
    feats = [torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 2, 4)]
    anchors = gen(feats)
    for (h, w), scale, a in zip([(4, 8), (2, 4)], [1.0, 2.0], anchors):
        assert a.shape == (h * w * 4, 7) and a.dtype == torch.float32
        np.testing.assert_allclose(a.numpy(), _expected(rng, sizes, rots, h, w, scale), atol=1e-5)
    # Both levels span the same metric range.
    for a in anchors:
        assert a[:, 0].min() > -8 and a[:, 0].max() < 8


def test_range_per_size():
    sizes = [[4.6, 1.95, 1.72], [0.73, 0.66, 1.76]]
    rng = [[-4.0, -4.0, -1.8, 4.0, 4.0, -1.8], [-2.0, -3.0, -1.6, 2.0, 3.0, -1.6]]
    gen = Anchor3DGenerator(sizes=sizes, ranges=rng, rotations=[0.0, 1.57], level_scales=[1.0])
    (a,) = gen.grid_anchors([(3, 5)], "cpu")
    np.testing.assert_allclose(a.numpy(), _expected(rng, sizes, [0.0, 1.57], 3, 5, 1.0), atol=1e-5)


def test_cache_and_errors():
    gen = Anchor3DGenerator(
        sizes=[[1, 1, 1]], ranges=[[0, 0, 0, 1, 1, 0]], rotations=[0], level_scales=[1]
    )
    a1 = gen.grid_anchors([(2, 2)], "cpu")[0]
    a2 = gen.grid_anchors([(2, 2)], "cpu")[0]
    assert a1 is a2
    assert gen.grid_anchors([(3, 2)], "cpu")[0].shape[0] == 6
    with pytest.raises(ValueError, match="LEVEL_SCALES"):
        gen.grid_anchors([(2, 2), (1, 1)], "cpu")
    with pytest.raises(ValueError, match="ANCHOR_RANGES"):
        Anchor3DGenerator(
            sizes=[[1, 1, 1]] * 3, ranges=[[0, 0, 0, 1, 1, 0]] * 2, rotations=[0], level_scales=[1]
        )
    with pytest.raises(ValueError):
        Anchor3DGenerator(
            sizes=[[1, 1]], ranges=[[0, 0, 0, 1, 1, 0]], rotations=[0], level_scales=[1]
        )


def test_from_config_defaults():
    cfg = get_cfg()
    add_pillars_config(cfg)
    gen = Anchor3DGenerator(cfg)
    assert gen.num_anchors_per_location == 8
    assert gen.num_levels == 3
    # The nuScenes FPN reference has 420,000 anchors per sample (200^2 + 100^2 + 50^2) * 8.
    anchors = gen.grid_anchors([(200, 200), (100, 100), (50, 50)], "cpu")
    assert sum(a.shape[0] for a in anchors) == 420000
    # Level 3 (scale 4) keeps the bottom at -1.8: centre z = -1.8 + 4 * 1.0 / 2.
    torch.testing.assert_close(anchors[2][:, 2], torch.full((20000,), 0.2))


def test_candidate_pairs_cover_every_overlap():
    from d2_pillars.structures import LiDARBoxes

    gen = Anchor3DGenerator(
        sizes=[[3.9, 1.6, 1.56], [0.8, 0.6, 1.73]],
        ranges=[[0, -10, -1.8, 30, 10, -1.8], [0, -8, -1.7, 28, 8, -1.7]],
        rotations=[0.0, 0.785, 1.57],
        level_scales=[1.0, 2.5],
    )
    grid = [(20, 30), (10, 15)]
    anchors = torch.cat(gen.grid_anchors(grid, "cpu"))
    abev = LiDARBoxes(anchors).nearest_bev().double()
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(40, 4, generator=g) * torch.tensor([36.0, 24.0, 5.0, 5.0])
    gt[:, 0] -= 3
    gt[:, 1] -= 12
    gbev = torch.stack(
        [gt[:, 0], gt[:, 1], gt[:, 0] + gt[:, 2] + 0.1, gt[:, 1] + gt[:, 3] + 0.1], 1
    )
    gi, ai = gen.candidate_pairs(gbev, grid)
    got = set(zip(gi.tolist(), ai.tolist()))
    assert len(got) == gi.numel()
    gb = gbev.double()
    ix = torch.minimum(gb[:, None, 2], abev[None, :, 2]) - torch.maximum(
        gb[:, None, 0], abev[None, :, 0]
    )
    iy = torch.minimum(gb[:, None, 3], abev[None, :, 3]) - torch.maximum(
        gb[:, None, 1], abev[None, :, 1]
    )
    overlap = (ix > 0) & (iy > 0)
    want = set(map(tuple, overlap.nonzero().tolist()))
    assert want and want <= got
    assert len(got) < 4 * len(want)
