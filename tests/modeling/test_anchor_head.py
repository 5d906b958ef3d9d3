import math
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.matcher import Matcher

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling import anchor_head as anchor_head_module
from d2_pillars.modeling.anchor_head import (
    Anchor3DHead,
    build_anchor3d_head,
    match_anchors,
    permute_to_N_HWA_K,
)
from d2_pillars.modeling.anchors import Anchor3DGenerator
from d2_pillars.modeling.box_coder import ResidualBoxCoder, direction_targets, limit_period
from d2_pillars.structures import LiDARBoxes


def _matcher():
    return Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=False)


def _aabb(cx, cy, sx, sy):
    return [cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2]


def _iou_numpy(a, b):
    """Brute-force axis-aligned IoU, (K, 4) x (N, 4) -> (K, N), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _reference_assign(gt, anchors, neg=0.3, pos=0.6, floor=0.3):
    """Independent max-IoU assignment (mmdetection3d MaxIoUAssigner semantics), numpy loops."""
    iou = _iou_numpy(gt, anchors)
    n = iou.shape[1]
    labels = np.zeros(n, np.int64)
    matches = np.zeros(n, np.int64)
    for j in range(n):
        best = iou[:, j].max()
        matches[j] = iou[:, j].argmax()
        labels[j] = 0 if best < neg else (1 if best >= pos else -1)
    for k in range(iou.shape[0]):
        best = iou[k].max()
        if best >= floor and best > 0:
            for j in np.nonzero(iou[k] == best)[0]:
                labels[j] = 1
                matches[j] = k
    return matches, labels


def test_match_targeted_cases():
    anchors = torch.tensor(
        [
            _aabb(0, 0, 2, 2),  # 0: equal to GT 0 -> positive
            _aabb(0.6, 0, 2, 2),  # 1: IoU 1.4/2.6 = 0.54 with GT 0 -> ignored
            _aabb(1.5, 0, 2, 2),  # 2: IoU 0.5/3.5 = 0.14 -> negative
            _aabb(40, 40, 2, 2),  # 3: far -> negative
            _aabb(10.3, 0, 2, 2),  # 4: best of GT 1, IoU 1.6/6.4 = 0.25 < floor -> negative
            _aabb(20.875, 0, 2, 2),  # 5, 6: tied best anchors of GT 2, IoU 2.25/5.75 = 0.39
            _aabb(19.125, 0, 2, 2),  # (ignore band) -> positive as low-quality matches
        ]
    )
    gt = torch.tensor(
        [_aabb(0, 0, 2, 2), _aabb(11.5, 0, 2, 2), _aabb(20, 0, 2, 2), _aabb(-30, 30, 1, 1)]
    )
    matches, labels = match_anchors(_matcher(), gt, anchors, 0.3)
    assert labels.tolist() == [1, -1, 0, 0, 0, 1, 1]
    assert matches[0] == 0 and matches[5] == 2 and matches[6] == 2
    # GT 3 overlaps no anchor: detectron2's floor-less low-quality step would make every
    # zero-IoU anchor positive; the floor prevents it.
    floorless = Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=True)
    _, d2_labels = floorless(torch.from_numpy(_iou_numpy(gt, anchors)).float())
    assert (d2_labels == 1).sum() > 3
    # Without low-quality matches the tied anchors of GT 2 are ignored.
    _, labels_no_lq = match_anchors(_matcher(), gt, anchors, None)
    assert labels_no_lq.tolist() == [1, -1, 0, 0, 0, -1, -1]


def test_match_no_gt():
    anchors = torch.tensor([_aabb(0, 0, 2, 2), _aabb(5, 5, 1, 1)])
    matches, labels = match_anchors(_matcher(), torch.zeros(0, 4), anchors, 0.3)
    assert labels.tolist() == [0, 0] and matches.shape == (2,)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 64])
def test_match_against_brute_force(monkeypatch, chunk_elements):
    monkeypatch.setattr(anchor_head_module, "_MATCH_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    # Anchors on a grid (as the generator makes them) and GTs near them, so that IoUs hit every
    # band; sizes from a small set makes ties common.
    xs, ys = np.meshgrid(np.arange(0, 20, 1.0), np.arange(0, 10, 1.0))
    sizes = [(2.0, 1.0), (1.0, 2.0), (1.0, 1.0)]
    anchors = np.array(
        [_aabb(x, y, sx, sy) for x, y in zip(xs.ravel(), ys.ravel()) for sx, sy in sizes]
    )
    # Coordinates in multiples of 1/8 keep every IoU exact in float32 and float64, so ties and
    # threshold comparisons agree with the float64 reference.
    q = rng.integers(0, 8 * np.array([20, 10, 3, 3]), size=(12, 4)) / 8.0
    gt = np.array(
        [_aabb(x, y, 0.5 + sx, 0.5 + sy) for x, y, sx, sy in q]
        + [_aabb(3.0, 4.0, 2.0, 1.0)]  # equals an anchor
    )
    matches, labels = match_anchors(
        _matcher(),
        torch.tensor(gt, dtype=torch.float32),
        torch.tensor(anchors, dtype=torch.float32),
        0.3,
    )
    want_matches, want_labels = _reference_assign(gt, anchors)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    pos = want_labels == 1
    # Where an anchor ties between two GTs the chosen one may differ; compare the IoU instead.
    iou = _iou_numpy(gt, anchors)
    np.testing.assert_allclose(
        iou[matches.numpy()[pos], np.nonzero(pos)[0]],
        iou[want_matches[pos], np.nonzero(pos)[0]],
        atol=1e-6,
    )
    assert set(np.unique(want_labels)) == {-1, 0, 1}


def _head(num_classes=3, code_size=7, level_scales=(1.0,), **kwargs):
    gen = Anchor3DGenerator(
        sizes=[[4.0, 2.0, 1.5], [1.0, 1.0, 1.0]],
        ranges=[[0.0, -8.0, -2.0, 16.0, 8.0, -2.0]],
        rotations=[0.0, 1.57],
        level_scales=list(level_scales),
    )
    return Anchor3DHead(
        in_channels=8,
        num_classes=num_classes,
        anchor_generator=gen,
        box_coder=ResidualBoxCoder(code_size),
        anchor_matcher=_matcher(),
        code_weights=[1.0] * 7 + [0.2] * (code_size - 7),
        **kwargs,
    )


def test_head_outputs_and_layout():
    torch.manual_seed(0)
    head = _head(level_scales=(1.0, 2.0))
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    logits, deltas, dirs = head(feats)
    anchors = head.anchors([(8, 8), (4, 4)], "cpu")
    for lvl, (h, w) in enumerate([(8, 8), (4, 4)]):
        n = h * w * 4
        assert logits[lvl].shape == (2, n, 3)
        assert deltas[lvl].shape == (2, n, 7)
        assert dirs[lvl].shape == (2, n, 2)
        assert anchors[lvl].shape == (n, 7)
    # prior-probability bias, normal(0, 0.01) weights
    torch.testing.assert_close(head.conv_cls.bias, torch.full((12,), -math.log(99.0)))
    assert head.conv_reg.weight.std() < 0.02 and (head.conv_reg.bias == 0).all()


def test_permutation_matches_anchor_order():
    # Channel a*K + k at (y, x) must land on anchor ((y * W + x) * A + a), column k.
    head = _head()
    b, a_num, k, h, w = 1, 4, 3, 2, 5
    t = torch.zeros(b, a_num * k, h, w)
    for a in range(a_num):
        for kk in range(k):
            for y in range(h):
                for x in range(w):
                    t[0, a * k + kk, y, x] = 1000 * y + 100 * x + 10 * a + kk
    out = permute_to_N_HWA_K(t, k)[0]
    anchors = head.anchor_generator.grid_anchors([(h, w)], "cpu")[0]
    for n in range(h * w * a_num):
        y, x, a = int(out[n, 0]) // 1000, int(out[n, 0]) // 100 % 10, int(out[n, 0]) // 10 % 10
        assert out[n].tolist() == [1000 * y + 100 * x + 10 * a + kk for kk in range(k)]
        # the anchor at n sits at cell (y, x) and has size a // 2, rotation a % 2
        assert abs(anchors[n, 0] - (0.0 + (x + 0.5) * 16.0 / w)) < 1e-5
        assert abs(anchors[n, 1] - (-8.0 + (y + 0.5) * 16.0 / h)) < 1e-5
        assert abs(anchors[n, 3] - [4.0, 1.0][a // 2]) < 1e-6
        assert abs(anchors[n, 6] - [0.0, 1.57][a % 2]) < 1e-6


def _gt_sample(boxes, classes):
    return LiDARBoxes(torch.tensor(boxes, dtype=torch.float32)), torch.tensor(classes)


def test_losses_finite_and_normalised():
    torch.manual_seed(0)
    head = _head(code_size=9)
    feats = [torch.randn(2, 8, 8, 8, requires_grad=True)]
    preds = head(feats)
    grid = [(8, 8)]
    gt1 = _gt_sample(
        [
            [3.0, 1.0, -1.25, 4.0, 2.0, 1.5, 0.2, 1.0, 0.0],
            [9.0, -5.0, -1.5, 1.0, 1.0, 1.0, 2.0, 0, 0],
        ],
        [0, 2],
    )
    gt2 = _gt_sample(np.zeros((0, 9)), [])  # a sample without GT: all negatives
    losses = head.losses(grid, *preds, [gt1[0], gt2[0]], [gt1[1], gt2[1]])
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_dir"}
    for v in losses.values():
        assert torch.isfinite(v) and v.item() > 0
    sum(losses.values()).backward()
    assert feats[0].grad.abs().sum() > 0

    # Independent check of the normaliser and of the classification loss at the init bias.
    labels, _ = head.label_anchors(grid, [gt1[0], gt2[0]], [gt1[1], gt2[1]])
    num_pos = ((labels >= 0) & (labels < 3)).sum(1)
    assert num_pos[0] > 0 and num_pos[1] == 0
    normalizer = num_pos.clamp(min=1).sum().item()
    logits = torch.cat(preds[0], 1).detach().double().numpy()
    lab = labels.numpy()
    p = 1 / (1 + np.exp(-logits))
    total = 0.0
    for bi in range(2):
        for n in range(lab.shape[1]):
            if lab[bi, n] < 0:
                continue
            for c in range(3):
                t = 1.0 if lab[bi, n] == c else 0.0
                pt = p[bi, n, c] if t else 1 - p[bi, n, c]
                alpha = 0.25 if t else 0.75
                total += -alpha * (1 - pt) ** 2 * np.log(pt)
    np.testing.assert_allclose(losses["loss_cls"].item(), total / normalizer, rtol=1e-4)


def test_losses_zero_positive_case():
    head = _head()
    feats = [torch.randn(1, 8, 4, 4, requires_grad=True)]
    preds = head(feats)
    # A GT far from every anchor: no positive (and no floor-less low-quality trap).
    gt = _gt_sample([[100.0, 100.0, -1.0, 4.0, 2.0, 1.5, 0.0]], [1])
    losses = head.losses([(4, 4)], *preds, [gt[0]], [gt[1]])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_dir"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert torch.isfinite(feats[0].grad).all()


def test_box_and_direction_targets_of_exact_prediction():
    # Predictions equal to the encoded targets (right direction bin) give zero box loss and a
    # direction loss that only depends on the logit margin.
    head = _head()
    anchors = head.anchors([(4, 4)], "cpu")
    gt_boxes, gt_classes = _gt_sample([[2.0, -6.0, -1.25, 4.0, 2.0, 1.5, -2.5]], [0])
    labels, matched = head.label_anchors([(4, 4)], [gt_boxes], [gt_classes])
    pos = (labels[0] == 0).nonzero()[:, 0]
    assert pos.numel() >= 1
    n = anchors[0].shape[0]
    logits = torch.full((1, n, 3), -10.0)
    deltas = torch.zeros(1, n, 7)
    dirs = torch.zeros(1, n, 2)
    deltas[0, pos] = head.box_coder.encode(gt_boxes.tensor.expand(pos.numel(), 7), anchors[0][pos])
    # flip the regressed yaw by pi: the sin-difference loss must not care
    deltas[0, pos, 6] += math.pi
    bin_ = direction_targets(gt_boxes.yaw, head.dir_offset)
    dirs[0, pos, bin_] = 20.0
    logits[0, pos, 0] = 10.0
    losses = head.losses([(4, 4)], [logits], [deltas], [dirs], [gt_boxes], [gt_classes])
    assert losses["loss_box_reg"].item() < 1e-5
    assert losses["loss_dir"].item() < 1e-6


def test_inference_recovers_box_and_heading():
    head = _head(score_thresh=0.3, nms_pre=20)
    anchors = head.anchors([(4, 4)], "cpu")
    n = anchors[0].shape[0]
    logits = torch.full((1, n, 3), -10.0)
    deltas = torch.zeros(1, n, 7)
    dirs = torch.zeros(1, n, 2)
    # Two boxes, headings in opposite quadrants; the regressed yaw is off by pi in the first.
    gts = torch.tensor(
        [[2.0, -6.0, -1.25, 4.5, 2.0, 1.5, -2.5], [10.0, 2.0, -1.0, 1.2, 0.9, 1.3, 1.2]]
    )
    for i, (idx, cls, score) in enumerate([(5, 2, 3.0), (40, 0, 1.0)]):
        deltas[0, idx] = head.box_coder.encode(gts[i : i + 1], anchors[0][idx : idx + 1])[0]
        if i == 0:
            deltas[0, idx, 6] -= math.pi
        dirs[0, idx, direction_targets(gts[i : i + 1, 6], head.dir_offset)] = 5.0
        logits[0, idx, cls] = score
    (inst,) = head.inference([(4, 4)], [logits], [deltas], [dirs], (4, 4))
    assert inst.image_size == (4, 4)
    assert len(inst) == 2
    assert isinstance(inst.pred_boxes3d, LiDARBoxes)
    assert inst.pred_classes.tolist() == [2, 0] and inst.pred_classes.dtype == torch.int64
    torch.testing.assert_close(inst.scores, torch.sigmoid(torch.tensor([3.0, 1.0])))
    got = inst.pred_boxes3d.tensor
    torch.testing.assert_close(got[:, :6], gts[:, :6], atol=1e-4, rtol=0)
    dyaw = limit_period(got[:, 6] - gts[:, 6], 0.5, 2 * math.pi)
    assert dyaw.abs().max() < 1e-4
    assert ((got[:, 6] >= -math.pi) & (got[:, 6] < math.pi)).all()


def test_inference_empty():
    head = _head()
    n = head.anchors([(4, 4)], "cpu")[0].shape[0]
    out = head.inference(
        [(4, 4)],
        [torch.full((2, n, 3), -10.0)],
        [torch.zeros(2, n, 7)],
        [torch.zeros(2, n, 2)],
        (4, 4),
    )
    assert len(out) == 2 and all(len(r) == 0 for r in out)
    assert out[0].pred_boxes3d.tensor.shape == (0, 7)


def test_from_config():
    cfg = get_cfg()
    add_pillars_config(cfg)
    head = build_anchor3d_head(cfg, [ShapeSpec(channels=16, stride=s) for s in (2, 4, 8)])
    assert isinstance(head, Anchor3DHead)
    assert head.conv_cls.out_channels == 8 * 10 and head.conv_reg.out_channels == 8 * 9
    assert head.conv_dir.out_channels == 16
    with pytest.raises(ValueError, match="different channels"):
        build_anchor3d_head(cfg, [ShapeSpec(channels=16), ShapeSpec(channels=32)])
    cfg.MODEL.ANCHOR3D_HEAD.BOX_CODE_SIZE = 7
    with pytest.raises(ValueError, match="CODE_WEIGHTS"):
        build_anchor3d_head(cfg, [ShapeSpec(channels=16)] * 3)


@pytest.mark.parametrize("per_size_ranges", [False, True])
def test_sparse_candidates_match_dense(per_size_ranges):
    sizes = [[4.6, 1.95, 1.72], [0.8, 0.7, 1.7], [1.7, 0.6, 1.3]]
    if per_size_ranges:
        ranges = [
            [-20, -10, -1.8, 20, 10, -1.8],
            [-19.6, -9.6, -1.7, 19.6, 9.6, -1.7],
            [-18.0, -8.0, -1.6, 18.0, 8.0, -1.6],
        ]
    else:
        ranges = [[-20, -10, -1.8, 20, 10, -1.8]]
    gen = Anchor3DGenerator(
        sizes=sizes, ranges=ranges, rotations=[0.0, 1.57], level_scales=[1.0, 2.0, 4.0]
    )
    grid = [(40, 80), (20, 40), (10, 20)]
    anchor_bev = LiDARBoxes(torch.cat(gen.grid_anchors(grid, "cpu"))).nearest_bev()
    g = torch.Generator().manual_seed(0)
    k = 60
    gt = torch.cat(
        [
            torch.rand(k, 2, generator=g) * torch.tensor([48.0, 28.0]) - torch.tensor([24.0, 14.0]),
            torch.zeros(k, 1),
            torch.rand(k, 3, generator=g) * 6 + 0.3,
            torch.rand(k, 1, generator=g) * 2 * math.pi - math.pi,
        ],
        dim=1,
    )
    gt[0, :2] = torch.tensor([100.0, 100.0])  # far outside the grid
    gt_bev = LiDARBoxes(gt).nearest_bev()
    cand = gen.candidate_pairs(gt_bev, grid)
    # no pair twice, and far fewer pairs than the dense matrix
    assert torch.unique(cand[0] * anchor_bev.shape[0] + cand[1]).numel() == cand[0].numel()
    assert cand[0].numel() < 0.2 * k * anchor_bev.shape[0]
    for floor in (0.3, None):
        m_dense, l_dense = match_anchors(_matcher(), gt_bev, anchor_bev, floor)
        m_sparse, l_sparse = match_anchors(_matcher(), gt_bev, anchor_bev, floor, cand)
        assert torch.equal(l_dense, l_sparse)
        pos = l_dense == 1
        assert pos.sum() > 20
        # same matched IoU (an anchor may tie between two GTs)
        iou = _iou_numpy(gt_bev.numpy(), anchor_bev[pos].numpy())
        cols = np.arange(int(pos.sum()))
        np.testing.assert_allclose(
            iou[m_dense[pos].numpy(), cols],
            iou[m_sparse[pos].numpy(), cols],
            atol=1e-6,
        )
