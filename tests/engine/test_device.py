"""MODEL.DEVICE cuda on a machine without CUDA: inference falls back to the CPU with one warning,
the export traces on the CPU, training stops with one sentence (d2_pillars/engine/device.py).

The seed configs keep detectron2's default ``MODEL.DEVICE cuda``; CUDA is hidden here by
``torch.cuda.is_available`` returning False in-process, and by ``CUDA_VISIBLE_DEVICES=`` for the
command-line runs, so the tests mean the same on a machine with a GPU.
"""

import importlib.util
import logging
import numpy as np
import os
import subprocess
import sys
import pytest
import torch

from d2_pillars.engine import (
    DeviceUnavailableError,
    PillarsPredictor,
    PillarsTrainer,
    build_pillars_model,
    check_training_device,
    device,
    inference_device_config,
    load_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = os.path.join(REPO, "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml")
#: the seed config on a 64 x 64 grid, no sweeps, untrained (the default weights need a download)
SEED_SMALL = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[0.5, 0.5, 8.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "INPUT.NUM_SWEEPS", "1",
    "MODEL.WEIGHTS", "",
]  # fmt: skip
NO_CUDA_ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_warned", set())  # each test sees its own first warning


def _seed_cfg(*opts):
    cfg = load_config(SEED, SEED_SMALL + list(opts))
    assert cfg.MODEL.DEVICE == "cuda"  # as shipped
    return cfg


def test_predictor_falls_back_to_the_cpu_with_one_warning(no_cuda, capture_logs):
    cfg = _seed_cfg()
    with capture_logs("d2_pillars.engine.device", logging.WARNING) as records:
        predictor = PillarsPredictor(cfg)
        build_pillars_model(cfg)  # --eval-only and the visualizer build through this
    assert len(records) == 1, [r.getMessage() for r in records]  # one line per process
    assert "MODEL.DEVICE" in records[0].getMessage() and "cpu" in records[0].getMessage()
    assert cfg.MODEL.DEVICE == "cuda"  # the caller's config is left alone
    assert predictor.cfg.MODEL.DEVICE == "cpu"
    assert next(predictor.model.parameters()).device.type == "cpu"
    rng = np.random.default_rng(0)
    points = np.concatenate(
        [rng.uniform(-15, 15, (4000, 2)), rng.uniform(-2, 0, (4000, 1)), np.zeros((4000, 1))], 1
    ).astype(np.float32)
    out = predictor.predict_points(points)["instances"]
    assert out.pred_boxes3d.tensor.device.type == "cpu" and len(out) >= 0


def test_inference_config_keeps_frozen_and_available_devices(no_cuda):
    cfg = _seed_cfg()
    cfg.freeze()
    cpu = inference_device_config(cfg)
    assert cpu.MODEL.DEVICE == "cpu" and cpu.is_frozen() and cfg.MODEL.DEVICE == "cuda"
    assert inference_device_config(cpu) is cpu  # nothing to change: the same object


def test_training_refuses_in_one_sentence(no_cuda):
    cfg = _seed_cfg()
    with pytest.raises(DeviceUnavailableError, match="MODEL.DEVICE cpu"):
        check_training_device(cfg, SEED)
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        PillarsTrainer(cfg)  # the Python API refuses before building anything
    check_training_device(load_config(SEED, SEED_SMALL + ["MODEL.DEVICE", "cpu"]))  # the fix


@pytest.mark.parametrize("num_gpus", ["1", "2"])
def test_train_net_refuses_without_a_traceback(num_gpus, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", SEED]
    cmd += ["--num-gpus", num_gpus, "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", ""]
    proc = subprocess.run(
        cmd, env=NO_CUDA_ENV, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "MODEL.DEVICE cpu" in proc.stderr and SEED in proc.stderr
    assert os.listdir(tmp_path) == []  # nothing started, nothing written


def test_export_tool_traces_on_the_cpu(no_cuda, tmp_path):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(REPO, "tools/deploy/export_model.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--config-file", SEED, "--output", str(tmp_path)] + SEED_SMALL
    assert tool.main(argv) == 0
    assert os.path.isfile(tmp_path / "model.onnx")
    exported = load_config(str(tmp_path / "config.yaml"))
    assert exported.MODEL.BACKEND == "onnxruntime"
    # the exported config runs where it was written: the onnxruntime model falls back as well
    model = build_pillars_model(exported)
    assert model.device.type == "cpu"
