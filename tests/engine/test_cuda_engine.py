"""Training and inference entry points on CUDA (skipped without CUDA): one AMP (float16 + loss
scaling) training step, the predictor against the CPU predictor, float16 inference against
float32, and ``tools/benchmark.py ops / e2e --device cuda``."""

import argparse
import json
import numpy as np
import os
import pytest
import torch

from detectron2.utils.events import EventStorage

from d2_pillars.benchmark import e2e, ops
from d2_pillars.engine import (
    AutocastTrainer,
    PillarsPredictor,
    PillarsTrainer,
    build_pillars_model,
    build_step_trainer,
    load_config,
)

from detections import assert_same_detections

pytestmark = pytest.mark.cuda

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = os.path.join(REPO, "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml")
DEMO = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")
SEED_REDUCED = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.WEIGHTS", "",
    "MODEL.ANCHOR3D_HEAD.NMS_PRE", "200",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "100",
]  # fmt: skip


@pytest.fixture(scope="module")
def points():
    with np.load(os.path.join(REPO, "tests/fixtures/parity/points_nus.npz")) as f:
        return f["points"]


def _predictor(device, dtype="float32"):
    cfg = load_config(SEED, SEED_REDUCED + ["MODEL.DEVICE", device, "MODEL.INFERENCE_DTYPE", dtype])
    torch.manual_seed(3)
    p = PillarsPredictor(cfg)
    head = p.model.head
    with torch.no_grad():
        head.conv_cls.bias.zero_()
        head.conv_dir.bias.copy_(torch.tensor([4.0, -4.0]).repeat(head.conv_dir.bias.numel() // 2))
    return p


def test_cuda_amp_training_step(points):
    """Two float16 steps with a GradScaler on the seed config (reduced grid): finite float32
    losses, a float16 pseudo-image, the scale recorded."""
    from d2_pillars.structures import LiDARBoxes

    cfg = load_config(SEED, SEED_REDUCED + ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"])
    torch.manual_seed(0)
    model = build_pillars_model(cfg).train()
    optimizer = PillarsTrainer.build_optimizer(cfg, model)
    sample = _predictor("cpu").mapper.prepare_points(points)
    sample["gt_boxes3d"] = LiDARBoxes(torch.tensor([[5.0, 2.0, -1.0, 4.2, 1.8, 1.6, 0.3, 0, 0]]))
    sample["gt_classes"] = torch.tensor([0])
    dtypes = []
    model.scatter.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = build_step_trainer(cfg, model, iter([[sample, sample]] * 2), optimizer)
    assert isinstance(trainer, AutocastTrainer) and trainer.grad_scaler is not None
    with EventStorage(0) as storage:
        for _ in range(2):
            trainer.run_step()
            storage.step()
        latest = storage.latest()
    assert dtypes == [torch.float16, torch.float16]
    assert np.isfinite(latest["total_loss"][0])
    assert "amp_loss_scale" in latest


def test_cuda_predictor_matches_cpu(points):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        a = _predictor("cpu").predict_points(points)["instances"]
        b = _predictor("cuda").predict_points(points)["instances"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert b.pred_boxes3d.device.type == "cpu"  # the predictor returns CPU instances
    assert_same_detections(
        a, b, atol=1e-3, score_atol=1e-4, tie_atol=1e-4, nms_thresh=0.2, max_detections=100
    )


def test_cuda_float16_inference_matches_float32(points):
    a = _predictor("cuda").predict_points(points)["instances"]
    b = _predictor("cuda", "float16").predict_points(points)["instances"]
    assert b.scores.dtype == torch.float32
    assert_same_detections(
        a,
        b,
        atol=0.05,
        score_atol=5e-3,
        tie_atol=5e-3,
        nms_thresh=0.2,
        max_detections=100,
        max_unmatched_fraction=0.1,
    )


def test_cuda_benchmark_ops(capsys):
    parser = argparse.ArgumentParser()
    ops.add_arguments(parser)
    ops.main(parser.parse_args(["--device", "cuda", "--repeats", "3"]))
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["device"] == "cuda"
    assert figures["multiclass_3000x10_kept"] == 500


def test_cuda_benchmark_e2e(tmp_path, capsys):
    from d2_pillars.data.datasets import NUSCENES_SPEC, create_infos
    from d2_pillars.synthetic import make_synthetic_nuscenes

    root = make_synthetic_nuscenes(
        str(tmp_path / "synthetic_nuscenes"), num_scenes=10, keyframes_per_scene=2, num_beams=8,
        azimuth_steps=128,
    )  # fmt: skip
    create_infos(NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=3, progress=False)
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    argv = ["--config-file", DEMO, "--root", root, "--device", "cuda", "--repeats", "2"]
    argv += ["--warmup", "1", "--train-batch", "2", "--train-repeats", "1", "--train-warmup", "1"]
    argv += ["--loader-samples", "2", "SOLVER.AMP.ENABLED", "True"]
    figures = e2e.main(parser.parse_args(argv))
    assert figures["device"] == "cuda"
    assert figures["train_peak_mem_gb"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["device"] == "cuda"
