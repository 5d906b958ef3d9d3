"""``tools/benchmark.py e2e`` on a tiny synthetic nuScenes set with the CPU demo config."""

import argparse
import json
import os
import pytest
import torch

from d2_pillars.benchmark import e2e
from d2_pillars.data.datasets import NUSCENES_SPEC, create_infos
from d2_pillars.synthetic import make_synthetic_nuscenes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_synthetic_nuscenes(
        str(tmp_path_factory.mktemp("datasets") / "synthetic_nuscenes"),
        num_scenes=10,
        keyframes_per_scene=2,
        num_beams=8,
        azimuth_steps=128,
    )
    create_infos(NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=3, progress=False)
    return root


def _args(root, *extra):
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    argv = ["--config-file", CONFIG, "--root", root, "--repeats", "2", "--warmup", "1"]
    argv += ["--train-batch", "2", "--train-repeats", "1", "--train-warmup", "0"]
    argv += ["--loader-samples", "2", *extra]
    # shrink the dense part: the test checks the bookkeeping, not the speed
    argv += ["MODEL.FPN.OUT_CHANNELS", "16"]
    return parser.parse_args(argv)


def test_e2e_figures_and_last_json_line(root, capsys):
    threads = torch.get_num_threads()
    figures = e2e.main(_args(root))
    assert torch.get_num_threads() == 1  # --threads defaults to 1 and is set explicitly
    torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(figures))
    for key in (
        "device",
        "points",
        "e2e_latency_s",
        "dense_latency_s",
        "e2e_over_dense",
        "loader_fps_per_worker",
        "train_fps",
        "loader_over_train",
        "train_peak_mem_gb",
        "stage_s",
        "stage_cpu_s",
        "load_average_1min",
    ):
        assert key in figures, key
    assert figures["device"] == "cpu" and figures["threads"] == 1 and figures["points"] > 1000
    stages = figures["stage_s"]
    assert set(stages) == {k for k, _ in e2e.INFERENCE_STAGES}
    assert all(v > 0 for v in stages.values())
    # the dense part is timed inside the end-to-end runs, so it is a part of them
    assert 0 < figures["dense_latency_s"] < figures["e2e_latency_s"]
    assert figures["e2e_over_dense"] > 1.0
    assert figures["post_pairs_above_threshold_fraction"] == 1.0  # full load: bias 0
    assert figures["detections"] > 0
    assert figures["train_peak_mem_gb"] >= figures["train_mem_before_gb"] > 0
    ratio = figures["loader_fps_per_worker"] / figures["train_fps"]
    assert figures["loader_over_train"] == pytest.approx(ratio)
    assert set(figures["targets"].values()) <= {"PASS", "FAIL"} and len(figures["targets"]) == 4
    assert any("PASS" in line or "FAIL" in line for line in out)
    assert figures["amp"] is True  # the CPU demo config trains with bfloat16 autocast


@pytest.mark.parametrize("amp_enabled", [False, True])
def test_e2e_training_runs_the_trainers_step(root, monkeypatch, amp_enabled):
    """The timed iterations are PillarsTrainer's own step: autocast exactly when AMP is on."""
    from d2_pillars.engine import amp

    # as on a CPU with native bfloat16 (elsewhere AMP trains in float32: tests/engine/test_amp.py)
    monkeypatch.setattr(amp, "cpu_has_native_bfloat16", lambda: True)
    steps = []
    run_step = amp.AutocastTrainer.run_step
    monkeypatch.setattr(
        amp.AutocastTrainer, "run_step", lambda self: steps.append(self.dtype) or run_step(self)
    )
    threads = torch.get_num_threads()
    figures = e2e.main(_args(root, "SOLVER.AMP.ENABLED", str(amp_enabled)))
    torch.set_num_threads(threads)
    assert figures["amp"] is amp_enabled and figures["train_fps"] > 0
    # CPU: bfloat16; one timed iteration, no warm-up
    assert steps == ([torch.bfloat16] if amp_enabled else [])


def test_e2e_onnxruntime_side_by_side(root, capsys):
    pytest.importorskip("onnxruntime")
    threads = torch.get_num_threads()
    # the one-input dense pillar-net layout: the quickest to export (bucketed: tests/deploy)
    argv = ["--backend", "onnxruntime", "--onnx-pillar-net", "dense", "--skip-train"]
    figures = e2e.main(_args(root, *argv))
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    ort = figures["onnxruntime"]
    # the same model exported and checked on the benchmark frame, run with the same threads
    assert ort["export_max_rel_diff"] <= 1e-4 and ort["providers"] == ["CPUExecutionProvider"]
    assert ort["pillar_net"] == "dense"
    assert set(ort["stage_s"]) == {
        "loading",
        "voxelization",
        "batching",
        "post_processing",
        "graph",
    }
    assert all(v > 0 for v in ort["stage_s"].values())
    # the graph's stages from onnxruntime's profiler, attributed to the modules they came from
    kernel = ort["graph_kernel_s"]
    assert set(kernel) == {"pillar_net", "scatter", "backbone", "neck", "head", "other"}
    assert all(kernel[k] > 0 for k in ("pillar_net", "scatter", "backbone", "neck", "head"))
    assert 0 < ort["e2e_in_run_graph_s"] < ort["e2e_latency_s"]
    # same load on the NMS: near-tied picks (kernels round differently) may change a count or two
    assert ort["detections"] == pytest.approx(figures["detections"], rel=0.02, abs=1)
    # the target's ratio is of paired runs (eager, then the graph, each repetition)
    assert figures["onnxruntime_over_torch_e2e"] == ort["paired_over_torch_e2e"] > 0
    assert ort["paired_torch_e2e_s"] > 0 and ort["paired_latency_s"] > 0
    assert ort["e2e_latency_s"] == ort["paired_latency_s"]  # the graph's runs alone
    ratio = ort["e2e_latency_s"] / figures["e2e_latency_s"]
    assert figures["onnxruntime_over_torch_e2e_tables"] == pytest.approx(ratio)
    assert "onnxruntime end to end / torch end to end (wall, paired runs)" in figures["targets"]
    assert "onnxruntime wall ms" in out and "network graph, one call" in out
    assert json.loads(out.strip().splitlines()[-1])["onnxruntime"]["pillar_net"] == "dense"


def test_e2e_openvino_int8_side_by_side(root, capsys):
    """--backend openvino --quantize int8: the int8 graph calibrated on training frames, timed
    beside eager torch; its check against the float model is reported; the ratio and the
    absolute targets are in the table and the JSON as for onnxruntime."""
    pytest.importorskip("openvino")
    threads = torch.get_num_threads()
    argv = ["--backend", "openvino", "--quantize", "int8", "--calibration-frames", "2"]
    figures = e2e.main(_args(root, *argv, "--onnx-pillar-net", "dense", "--skip-train"))
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    ov = figures["openvino"]
    assert ov["quantize"] == "int8" and ov["calibration_frames"] == 2
    assert ov["providers"][0].startswith("OpenVINO") and "graph_kernel_s" not in ov
    assert ov["int8_check"]["frames"] == 1 and ov["int8_check"]["reference_boxes"] > 0
    assert 0 < ov["e2e_in_run_graph_s"] < ov["e2e_latency_s"]
    # the target's ratio is of paired runs (eager, then the graph, each repetition)
    assert figures["openvino_over_torch_e2e"] == ov["paired_over_torch_e2e"] > 0
    assert ov["paired_torch_e2e_s"] > 0 and ov["paired_latency_s"] > 0
    assert ov["e2e_latency_s"] == ov["paired_latency_s"]  # the graph's runs alone
    ratio = ov["e2e_latency_s"] / figures["e2e_latency_s"]
    assert figures["openvino_over_torch_e2e_tables"] == pytest.approx(ratio)
    assert "openvino int8 end to end / torch end to end (wall, paired runs)" in figures["targets"]
    assert "openvino int8 end to end (s)" in figures["targets"]
    assert "openvino int8 wall ms" in out and "int8 graph: calibrated on 2" in out


def test_config_default_weights_are_not_fetched_unless_given():
    """The RegNet seed configs default to an ImageNet URL; the benchmark times random weights
    offline unless MODEL.WEIGHTS is given on its command line."""
    import argparse

    from d2_pillars.benchmark.e2e import _load_cfg

    config = "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml"
    args = argparse.Namespace(config_file=config, opts=[], device="cpu")
    assert _load_cfg(args).MODEL.WEIGHTS == ""
    args.opts = ["MODEL.WEIGHTS", "given.pth"]
    assert _load_cfg(args).MODEL.WEIGHTS == "given.pth"
