import math
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.matcher import Matcher

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.anchor_head import Anchor3DHead, build_anchor3d_head, permute_to_N_HWA_K
from d2_pillars.modeling.anchors import Anchor3DGenerator
from d2_pillars.modeling.box_coder import ResidualBoxCoder, direction_targets, limit_period
from d2_pillars.structures import LiDARBoxes


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
        anchor_matcher=Matcher([0.3, 0.6], [0, -1, 1], allow_low_quality_matches=False),
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


def test_row_max_equals_amax():
    from d2_pillars.modeling.anchor_head import _row_max

    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 10):
        x = torch.randn(1000, k, generator=gen)
        x[5] = 0.5  # a tied row
        assert torch.equal(_row_max(x), x.amax(dim=1))
        assert _row_max(x).data_ptr() != x.data_ptr()  # a new tensor, x untouched
