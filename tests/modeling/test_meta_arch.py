import math
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances

from d2_pillars.modeling.meta_arch import PointPillars
from d2_pillars.structures import LiDARBoxes

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


@pytest.mark.parametrize("backbone", ["build_second_fpn_backbone", "build_regnet_fpn_backbone"])
def test_channels_last_gives_the_same_model(cfg, backbone):
    """MODEL.CHANNELS_LAST changes the memory format of the dense part only: the pseudo-image is
    NHWC, and predictions, losses and gradients equal those of the default layout."""
    cfgs = []
    for channels_last in (False, True):
        c = cfg.clone()
        c.MODEL.BACKBONE.NAME = backbone
        if backbone == "build_regnet_fpn_backbone":
            c.MODEL.REGNET.STEM_WIDTH = c.MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS[-1]
            # 4 stages, widths 8, 32, 64, 128
            c.MODEL.REGNET.DEPTH, c.MODEL.REGNET.W0, c.MODEL.REGNET.WA = 5, 8, 24.0
            c.MODEL.REGNET.WM, c.MODEL.REGNET.GROUP_WIDTH = 2.0, 8
            c.MODEL.REGNET.OUT_FEATURES = ["s2", "s3", "s4"]
            c.MODEL.FPN.IN_FEATURES = ["s2", "s3", "s4"]
        c.MODEL.CHANNELS_LAST = channels_last
        cfgs.append(c)
    models = []
    for c in cfgs:
        torch.manual_seed(0)
        models.append(build_model(c))
    dense, nhwc = models
    assert not dense.channels_last and nhwc.channels_last
    assert dense.backbone.state_dict().keys() == nhwc.backbone.state_dict().keys()
    for model in models:  # 3x3 convolution weights: NHWC in the channels-last model only
        weights = [p for p in model.backbone.parameters() if p.dim() == 4 and p.shape[-1] == 3]
        assert weights
        for w in weights:
            assert w.is_contiguous(memory_format=torch.channels_last) == model.channels_last
            assert w.is_contiguous() != model.channels_last

    inputs = make_inputs(cfgs[0], [0, 1])
    for m in models:
        m.train()
    losses = [m(inputs) for m in models]
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-4, atol=1e-5)

    with torch.no_grad():
        v, n, c = nhwc.batch_voxels(inputs)
        features = dense.pillar_encoder(v, n, c)
        canvas = nhwc.scatter(features, c, len(inputs))
        assert canvas.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(canvas, dense.scatter(features, c, len(inputs)), rtol=0, atol=0)
    # Gradients of the dense part in float64 (in float32, training-mode BN on these tiny maps
    # amplifies the rounding differences of the two layouts to ~1%).
    grads = []
    for m in models:
        m.double()
        x = canvas.double()
        maps = m.backbone(x if m.channels_last else x.contiguous())
        outputs = m.head([maps[f] for f in m.head_in_features])
        sum((t * t).mean() for level in outputs for t in level).backward()
        grads.append({k: p.grad for k, p in m.named_parameters() if not k.startswith("pillar")})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-9, atol=1e-12)

    preds = []
    with torch.no_grad():
        for m in models:
            m.float().eval()
            maps = m.backbone(canvas if m.channels_last else canvas.contiguous())
            preds.append(m.head([maps[f] for f in m.head_in_features]))
    for a, b in zip(*preds):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
