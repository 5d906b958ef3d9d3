import math
import numpy as np
import pytest
import shapely
import torch

from d2_pillars.layers import pairwise_iou_rotated_bev
from d2_pillars.layers.rotated_iou import (
    _pairwise_iou_torch,
    bev_to_d2_rotated,
    detectron2_box_iou_rotated_available,
    iou_of_pairs,
)


def shapely_polygons(boxes):
    """Rectangles (x, y, l, w, yaw) as shapely polygons, corners built in float64 numpy."""
    b = np.asarray(boxes, dtype=np.float64)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    xy = local[None] * b[:, None, 2:4]  # (N, 4, 2)
    c, s = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    x = b[:, 0:1] + c * xy[..., 0] - s * xy[..., 1]
    y = b[:, 1:2] + s * xy[..., 0] + c * xy[..., 1]
    return shapely.polygons(np.stack([x, y], axis=-1))


def shapely_iou(boxes_a, boxes_b):
    """IoU of matched pairs with shapely (float64)."""
    pa, pb = shapely_polygons(boxes_a), shapely_polygons(boxes_b)
    inter = shapely.area(shapely.intersection(pa, pb))
    union = shapely.area(pa) + shapely.area(pb) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


def random_boxes(gen, n, span=6.0, offset=0.0):
    return torch.cat(
        [
            (torch.rand(n, 2, generator=gen) - 0.5) * span + offset,
            torch.rand(n, 2, generator=gen) * 4.5 + 0.3,
            (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi,
        ],
        dim=1,
    )


def hard_pairs(seed=0, n=1000):
    """About 12,000 pairs covering the degenerate and near-degenerate configurations."""
    gen = torch.Generator().manual_seed(seed)
    a_list, b_list = [], []

    def add(a, b):
        a_list.append(a)
        b_list.append(b)

    # General overlapping / partially overlapping / disjoint at small and large coordinates.
    for offset in (0.0, 45.0, -47.5):
        add(random_boxes(gen, 2 * n, offset=offset), random_boxes(gen, 2 * n, offset=offset))
    a = random_boxes(gen, n)
    # Identical boxes, and identical up to a half turn / a quarter turn of a square.
    add(a, a.clone())
    b = a.clone()
    b[:, 4] += math.pi
    add(a, b)
    sq = a.clone()
    sq[:, 3] = sq[:, 2]
    b = sq.clone()
    b[:, 4] += math.pi / 2
    add(sq, b)
    # Nested: a smaller box inside, random rotation around the same centre and shifted inside.
    b = a.clone()
    b[:, 2:4] *= 0.3
    b[:, 4] = (torch.rand(n, generator=gen) * 2 - 1) * math.pi
    add(a, b)
    b = a.clone()
    b[:, 2:4] *= 0.5
    along = (torch.rand(n, generator=gen) - 0.5) * 0.4 * a[:, 2]
    b[:, 0] += along * torch.cos(a[:, 4])
    b[:, 1] += along * torch.sin(a[:, 4])
    add(a, b)
    # Touching: same heading, shifted by exactly l (edge to edge), or by l along and w across
    # (corner to corner); and shifted by half a length (collinear long edges, same direction).
    for k_l, k_w in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
        b = a.clone()
        dl, dw = k_l * a[:, 2], k_w * a[:, 3]
        c, s = torch.cos(a[:, 4]), torch.sin(a[:, 4])
        b[:, 0] += dl * c - dw * s
        b[:, 1] += dl * s + dw * c
        add(a, b)
    # Near-parallel: tiny relative rotations with and without offsets.
    for eps in (1e-7, 1e-5, 1e-3):
        b = a.clone()
        b[:, 4] += eps * torch.sign(torch.rand(n, generator=gen) - 0.5)
        add(a, b)
        b = b.clone()
        b[:, 0] += 0.3 * a[:, 2] * torch.cos(a[:, 4])
        b[:, 1] += 0.3 * a[:, 2] * torch.sin(a[:, 4])
        add(a, b)
    # Disjoint, far apart.
    b = a.clone()
    b[:, 0] += 20.0
    add(a, b)
    # Thin boxes crossing each other.
    thin = a.clone()
    thin[:, 3] = 0.02
    b = thin.clone()
    b[:, 4] += math.pi / 2
    add(thin, b)
    return torch.cat(a_list), torch.cat(b_list)


def test_iou_matches_shapely_on_hard_pairs():
    a, b = hard_pairs()
    assert a.shape[0] >= 10000
    ours = iou_of_pairs(a, b).double().numpy()
    ref = shapely_iou(a.numpy(), b.numpy())
    err = np.abs(ours - ref)
    assert err.max() <= 1e-4, (err.max(), a[err.argmax()], b[err.argmax()], ref[err.argmax()])
    # Sanity of the generated cases: identical pairs give 1, the far pairs 0.
    assert np.allclose(ours[6000:7000], 1.0, atol=1e-5)
    # Symmetry.
    ours_swapped = iou_of_pairs(b, a).double().numpy()
    assert np.abs(ours_swapped - ref).max() <= 1e-4


def test_pairwise_matrix_matches_shapely():
    gen = torch.Generator().manual_seed(1)
    a = random_boxes(gen, 70, span=12.0)
    b = torch.cat([random_boxes(gen, 50, span=12.0), a[:10]])  # includes identical boxes
    ours = pairwise_iou_rotated_bev(a, b)
    assert ours.shape == (70, 60) and ours.dtype == torch.float32
    ii, jj = np.meshgrid(np.arange(70), np.arange(60), indexing="ij")
    ref = shapely_iou(a.numpy()[ii.ravel()], b.numpy()[jj.ravel()]).reshape(70, 60)
    assert np.abs(ours.double().numpy() - ref).max() <= 1e-4
    assert (ref > 0).mean() > 0.05  # the test covers overlapping pairs


def test_float64_and_empty_inputs():
    gen = torch.Generator().manual_seed(2)
    a = random_boxes(gen, 5).double()
    assert pairwise_iou_rotated_bev(a, a).dtype == torch.float64
    assert torch.allclose(torch.diagonal(pairwise_iou_rotated_bev(a, a)), torch.ones(5).double())
    assert pairwise_iou_rotated_bev(a[:0], a).shape == (0, 5)
    assert pairwise_iou_rotated_bev(a, a[:0]).shape == (5, 0)
    assert iou_of_pairs(a[:0], a[:0]).shape == (0,)


def test_zero_area_boxes_give_zero():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 2, 1, 0.0]])
    iou = pairwise_iou_rotated_bev(boxes, boxes)
    assert torch.isfinite(iou).all()
    assert iou[0, 0] == 0 and iou[1, 1] == 0 and iou[2, 2] == pytest.approx(1)
    assert iou[0, 2] == pytest.approx(0, abs=1e-6)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        pairwise_iou_rotated_bev(torch.zeros(3, 7), torch.zeros(3, 5))


def test_chunked_pairs_equal_unchunked(monkeypatch):
    import d2_pillars.layers.rotated_iou as ri

    a, b = hard_pairs(seed=3, n=100)
    full = iou_of_pairs(a, b)
    monkeypatch.setattr(ri, "_PAIR_CHUNK", 97)
    monkeypatch.setattr(ri, "_CIRCLE_BLOCK", 50)
    assert torch.equal(iou_of_pairs(a, b), full)
    gen = torch.Generator().manual_seed(4)
    x, y = random_boxes(gen, 40), random_boxes(gen, 30)
    chunked = pairwise_iou_rotated_bev(x, y)
    monkeypatch.undo()
    assert torch.equal(chunked, pairwise_iou_rotated_bev(x, y))


def test_d2_conversion_is_the_same_rectangle():
    # detectron2 rotates (w, h) = (l, w) corners by +angle degrees; check against our corners.
    boxes = torch.tensor([[1.0, 2.0, 4.0, 2.0, 0.5]])
    d2 = bev_to_d2_rotated(boxes)[0].double()
    cx, cy, w, h, ang = d2.tolist()
    t = math.radians(ang)
    # detectron2's get_rotated_vertices, first vertex.
    v0 = (
        cx - math.sin(t) * h / 2 - math.cos(t) * w / 2,
        cy + math.cos(t) * h / 2 - math.sin(t) * w / 2,
    )
    poly = shapely_polygons(boxes.numpy())[0]
    dist = shapely.distance(shapely.points(v0), shapely.boundary(poly))
    assert dist < 1e-5


@pytest.mark.skipif(
    not detectron2_box_iou_rotated_available(), reason="detectron2 without compiled box_iou_rotated"
)
def test_detectron2_path_matches_torch_path():
    gen = torch.Generator().manual_seed(5)
    a, b = random_boxes(gen, 60), random_boxes(gen, 50)
    assert torch.allclose(pairwise_iou_rotated_bev(a, b), _pairwise_iou_torch(a, b), atol=1e-4)
