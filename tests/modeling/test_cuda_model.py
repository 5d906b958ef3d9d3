"""The model on CUDA against the CPU, same weights (skipped without CUDA).

Tolerances (TF32 off, so both sides compute in float32): losses within 1e-3 relative, every
gradient within 1e-3 of its tensor's largest CPU value (relative), eval detections the same
(``assert_same_detections`` with box parameters 1e-3, scores 1e-4).
"""

import pytest
import torch

from d2_pillars.engine import build_pillars_model

from detections import assert_same_detections, no_suppression
from pillars_scenes import make_inputs, tiny_cfg

pytestmark = pytest.mark.cuda


@pytest.fixture
def exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pair():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    cpu = build_pillars_model(cfg)
    cfg_dev = cfg.clone()
    cfg_dev.MODEL.DEVICE = "cuda"
    dev = build_pillars_model(cfg_dev)
    dev.load_state_dict(cpu.state_dict())
    return cfg, cpu, dev


def test_cuda_forward_loss_backward_match_cpu(exact_float32):
    cfg, cpu, dev = _pair()
    batch = make_inputs(cfg, [0, 1], train=True)
    results = []
    for model in (cpu, dev):
        model.train()
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {
            n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None
        }
        results.append(({k: float(v) for k, v in losses.items()}, grads))
    (loss_cpu, grad_cpu), (loss_dev, grad_dev) = results
    for k in loss_cpu:
        assert loss_dev[k] == pytest.approx(loss_cpu[k], rel=1e-3, abs=1e-6), k
    assert grad_cpu.keys() == grad_dev.keys()
    for name, g in grad_cpu.items():
        scale = float(g.abs().max()) or 1.0
        assert float((g - grad_dev[name]).abs().max()) <= 1e-3 * scale, name


def test_cuda_inference_matches_cpu(exact_float32):
    cfg, cpu, dev = _pair()
    batch = make_inputs(cfg, [3], train=False)
    out = []
    with torch.no_grad():
        for model in (cpu.eval(), dev.eval()):
            model.head.conv_cls.bias.zero_()
            out.append(model(batch)[0]["instances"].to("cpu"))

    def pool(model):
        with torch.no_grad(), no_suppression(model.head):
            return model(batch)[0]["instances"].to("cpu")

    assert_same_detections(
        out[0],
        out[1],
        atol=1e-3,
        score_atol=1e-4,
        tie_atol=1e-4,
        nms_thresh=cpu.head.nms_thresh,
        max_detections=cpu.head.max_detections_per_sample,
        candidates_a=lambda: pool(cpu),
        candidates_b=lambda: pool(dev),
    )
