import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances

from d2_pillars.modeling.meta_arch import PointPillars
from d2_pillars.structures import LiDARBoxes

import math
from pillars_scenes import make_inputs, tiny_cfg


@pytest.fixture(scope="module")
def cfg():
    return tiny_cfg()


def _empty_sample(like):
    m, c = like["voxels"].shape[1:]
    return {
        "voxels": torch.zeros(0, m, c),
        "voxel_coords": torch.zeros(0, 3, dtype=torch.int32),
        "voxel_num_points": torch.zeros(0, dtype=torch.int32),
        "gt_boxes3d": LiDARBoxes(torch.zeros(0, 7)),
        "gt_classes": torch.zeros(0, dtype=torch.int64),
    }


def test_build_and_train_step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, PointPillars)
    assert model.device == torch.device("cpu")
    inputs = make_inputs(cfg, [0, 1])
    no_gt = dict(inputs[1], gt_boxes3d=LiDARBoxes(torch.zeros(0, 7)), gt_classes=torch.zeros(0))
    batch = [inputs[0], no_gt, _empty_sample(inputs[0])]  # normal, no GT, no voxels
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_dir"}
    for name, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), name
    assert losses["loss_box_reg"] > 0
    sum(losses.values()).backward()
    pfn_grads = [p.grad for p in model.pillar_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in pfn_grads)
    assert sum(g.abs().sum() for g in pfn_grads) > 0
    for p in model.head.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_inference_outputs(cfg):
    torch.manual_seed(0)
    cfg = cfg.clone()
    # An untrained model scores ~PRIOR_PROB everywhere: keep every candidate to exercise NMS.
    cfg.MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ANCHOR3D_HEAD.NMS_PRE = 200
    cfg.MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE = 50
    model = build_model(cfg)
    model.eval()
    inputs = make_inputs(cfg, [2, 3], train=False)
    with torch.no_grad():
        outputs = model(inputs + [_empty_sample(inputs[0])])
    assert len(outputs) == 3
    for out in outputs:
        inst = out["instances"]
        assert isinstance(inst, Instances)
        assert inst.image_size == (64, 64)
        assert isinstance(inst.pred_boxes3d, LiDARBoxes) and inst.pred_boxes3d.box_dim == 7
        n = len(inst)
        assert 0 < n <= cfg.MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE
        assert inst.scores.shape == (n,) and inst.pred_classes.shape == (n,)
        assert (inst.scores > cfg.MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 2
        yaw = inst.pred_boxes3d.yaw
        assert ((yaw >= -math.pi) & (yaw < math.pi)).all()
        assert torch.isfinite(inst.pred_boxes3d.tensor).all()


def test_input_errors(cfg):
    model = build_model(cfg)
    inputs = make_inputs(cfg, [0])
    with pytest.raises(KeyError, match="voxels"):
        model([{"points": torch.zeros(3, 4)}])
    model.train()
    with pytest.raises(KeyError, match="gt_boxes3d"):
        model([{k: v for k, v in inputs[0].items() if k != "gt_boxes3d"}])
    bad = dict(inputs[0], gt_classes=torch.full_like(inputs[0]["gt_classes"], 5))
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        model([bad])
