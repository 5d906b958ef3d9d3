"""Overfit check: the whole model (pillar net, SECOND + FPN, anchor head) learns 4 fixed scenes.

On CPU (2 cores) recall 1.0 is reached after about 30 AdamW iterations (20-60 s); the test stops
as soon as the goal is met and fails after MAX_ITERS.
"""

import math
import torch

from detectron2.modeling import build_model

from d2_pillars.layers import pairwise_iou_rotated_bev
from d2_pillars.modeling.box_coder import limit_period

from pillars_scenes import make_inputs, tiny_cfg

MAX_ITERS = 120
EVAL_PERIOD = 10
SCORE_THRESH = 0.3
IOU_THRESH = 0.5


def _evaluate(model, inputs):
    """Recall at rotated BEV IoU >= 0.5 (same class, score >= 0.3), the number of such
    detections and the largest heading error (rad) of the matched ones."""
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    model.train()
    hits = total = num_det = 0
    max_yaw_err = 0.0
    for x, out in zip(inputs, outputs):
        inst = out["instances"]
        inst = inst[inst.scores >= SCORE_THRESH]
        gt = x["gt_boxes3d"]
        total += len(gt)
        num_det += len(inst)
        if len(inst) == 0:
            continue
        iou = pairwise_iou_rotated_bev(gt.bev(), inst.pred_boxes3d.bev())
        iou = iou * (x["gt_classes"][:, None] == inst.pred_classes[None, :])
        best, idx = iou.max(dim=1)
        hit = best >= IOU_THRESH
        hits += int(hit.sum())
        yaw_err = limit_period(inst.pred_boxes3d.yaw[idx] - gt.yaw, 0.5, 2 * math.pi).abs()
        if hit.any():
            max_yaw_err = max(max_yaw_err, float(yaw_err[hit].max()))
    return hits / total, num_det, total, max_yaw_err


def test_overfit_four_scenes():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    # BN running statistics must settle for eval-mode inference; the reference momentum (0.01)
    # needs a few hundred iterations for that, 0.1 a few tens.
    cfg.MODEL.BN_MOMENTUM = 0.1
    model = build_model(cfg)
    model.train()
    inputs = make_inputs(cfg, [0, 1, 2, 3], num_boxes=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    history = []
    for it in range(1, MAX_ITERS + 1):
        losses = model(inputs)
        loss = sum(losses.values())
        assert torch.isfinite(loss), (it, losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % EVAL_PERIOD == 0:
            recall, num_det, total, yaw_err = _evaluate(model, inputs)
            history.append((it, round(loss.item(), 4), recall, num_det, round(yaw_err, 3)))
            # every box found, few extra detections, headings resolved (no pi flips)
            if recall >= 0.9 and num_det <= 1.5 * total and yaw_err < 0.3:
                return
    raise AssertionError(f"no convergence; (iter, loss, recall, #det, max yaw err): {history}")
