"""ONNX export and onnxruntime inference (d2_pillars.deploy, tools/deploy/export_model.py).

One synthetic nuScenes keyframe (with sweeps) from the built-in generator is the frame of every
check; the demo config is exported at its own grid and a seed config at a reduced grid.
"""

import numpy as np
import os
import sys
import pytest
import torch

from d2_pillars.data import PointCloudMapper
from d2_pillars.deploy import (
    DeployDependencyError,
    ExportCheckError,
    NotExportableError,
    OnnxPillarsPredictor,
    OnnxPointPillars,
    build_predictor,
    export_onnx,
    exportable_copy,
    model_inputs,
    select_providers,
)
from d2_pillars.deploy.export import (
    check_onnx,
    compare_outputs,
    eager_network_outputs,
    synthetic_check_record,
)
from d2_pillars.deploy.network import graph_inputs
from d2_pillars.engine import PillarsPredictor, build_pillars_model, load_config

from detections import assert_same_detections, no_suppression

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")
SEED = os.path.join(REPO, "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml")
#: the seed config on a 128 x 128 grid (its 0.25 m pillars over +-16 m), 3 sweeps
SEED_REDUCED = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "INPUT.NUM_SWEEPS", "3",
]  # fmt: skip


def _cfg(path, *opts):
    # NMS_PRE 200 (post-processing only): a full-load NMS of 3 x 200 candidates keeps tests fast
    return load_config(path, ["MODEL.DEVICE", "cpu", "MODEL.ANCHOR3D_HEAD.NMS_PRE", "200", *opts])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return synthetic_check_record(
        str(tmp_path_factory.mktemp("datasets") / "synthetic_nuscenes"), num_sweeps=3
    )


def _full_load_predictor(cfg, seed=0):
    """An eager predictor with seeded weights and class bias 0: every class of every candidate
    scores about 0.5, so the post-processing has plenty of boxes to keep."""
    torch.manual_seed(seed)
    predictor = PillarsPredictor(cfg)
    with torch.no_grad():
        predictor.model.head.conv_cls.bias.zero_()
    return predictor


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory, record):
    cfg = _cfg(DEMO)
    predictor = _full_load_predictor(cfg)
    sample = PointCloudMapper(cfg, is_train=False)(record)
    out = str(tmp_path_factory.mktemp("onnx_demo"))
    report = export_onnx(cfg, out, model=predictor.model, sample=sample)
    return cfg, predictor, sample, report, out


def _onnx_cfg(cfg, out, **kw):
    cfg = cfg.clone()
    cfg.MODEL.BACKEND = "onnxruntime"
    cfg.MODEL.ONNX.PATH = out
    cfg.MODEL.ONNX.INTRA_OP_THREADS = 1
    return cfg


def _check_against_eager(model, path, sample):
    """Run the written graph with onnxruntime ourselves and compare with the eager model."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = model_inputs(sample)
    names = [o.name for o in session.get_outputs()]
    variant = "dense" if session.get_inputs()[0].name == "voxels" else "bucketed"
    feeds = {
        i.name: t.numpy() for i, t in zip(session.get_inputs(), graph_inputs(*inputs, variant))
    }
    actual = session.run(names, feeds)
    reference = eager_network_outputs(model, *inputs)
    diffs = compare_outputs(names, reference, actual)
    assert max(rel for _, rel in diffs.values()) <= 1e-4, diffs
    return names, actual


def test_demo_config_exports_and_matches_eager(demo_export):
    cfg, predictor, sample, report, out = demo_export
    assert cfg.MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS is False and cfg.MODEL.CHANNELS_LAST
    for name in ("model.onnx", "config.yaml", "export.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert report.opset == 18 and report.worst_rel_diff <= 1e-4
    v = sample["voxels"].shape[0]
    assert report.num_pillars == [v, v // 2]  # two pillar counts: the axis is dynamic
    names, actual = _check_against_eager(predictor.model, report.path, sample)
    # M = 20: buckets of 2, 4, 8, 16 and 20 slots
    graph_input_names = OnnxPointPillars(_onnx_cfg(cfg, out)).input_names
    assert graph_input_names[:3] == ["voxels_2", "num_points_2", "coords_2"]
    assert len(graph_input_names) == 15
    assert names == [f"{k}_{f}" for k in ("cls", "reg", "dir") for f in ("p1", "p2", "p3")]
    assert actual[0].shape == (1, 64 * 64 * 8, 10)  # 128 x 128 grid, stride 2, 8 anchors
    # the eager model is left as it was (channels-last weights, eval mode)
    assert not predictor.model.training
    weight = predictor.model.head.conv_cls.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_seed_config_exports_at_reduced_grid(record, tmp_path):
    cfg = _cfg(SEED, *SEED_REDUCED)
    assert cfg.MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS is True  # the reference's HardVFE mode
    torch.manual_seed(1)
    model = build_pillars_model(cfg).eval()
    with torch.no_grad():
        model.head.conv_cls.bias.zero_()  # boxes above the score threshold
    sample = PointCloudMapper(cfg, is_train=False)(record)
    assert sample["voxels"].shape[1] == cfg.INPUT.MAX_POINTS_PER_VOXEL
    # bucketed pillar net (the default) with padded slots: every pillar of a bucket keeps one
    report = export_onnx(cfg, str(tmp_path), model=model, sample=sample)
    assert report.worst_rel_diff <= 1e-4
    _check_against_eager(model, report.path, sample)
    onnx_model = OnnxPointPillars(_onnx_cfg(cfg, str(tmp_path)))
    # M = 64: buckets of 2 .. 32 and 64 slots
    assert [n for n in onnx_model.input_names if n.startswith("voxels")] == [
        f"voxels_{m}" for m in (2, 4, 8, 16, 32, 64)
    ]
    _same_detections(model, model.head, onnx_model, onnx_model.postprocess.head, [sample])


def _same_detections(run_a, head_a, run_b, head_b, *inputs):
    """Eager torch and onnxruntime give the same detections up to float rounding: matched one to
    one, near ties of the NMS and of the limit interchangeable (tests/detections.py)."""

    def instances(run):
        out = run(*inputs)
        return (out[0] if isinstance(out, list) else out)["instances"]

    def pool(run, head):
        with no_suppression(head):
            return instances(run)

    assert_same_detections(
        instances(run_a),
        instances(run_b),
        nms_thresh=head_a.nms_thresh,
        max_detections=head_a.max_detections_per_sample,
        candidates_a=lambda: pool(run_a, head_a),
        candidates_b=lambda: pool(run_b, head_b),
    )


def test_onnxruntime_predictor_gives_the_same_boxes(demo_export, record):
    cfg, predictor, sample, report, out = demo_export
    onnx_predictor = OnnxPillarsPredictor(_onnx_cfg(cfg, out))
    assert onnx_predictor.model.providers == ["CPUExecutionProvider"]
    eager = predictor(record)["instances"]
    ours = onnx_predictor(record)["instances"]
    assert len(eager) > 50  # full load: many boxes through the NMS
    assert ours.image_size == eager.image_size
    heads = (predictor.model.head, onnx_predictor.model.postprocess.head)
    _same_detections(predictor, heads[0], onnx_predictor, heads[1], record)
    # predict_points: a cloud the caller already has (the keyframe's mapped points)
    points = np.random.default_rng(0).uniform(-50, 50, (20000, 4)).astype(np.float32)
    points[:, 2] = np.random.default_rng(1).uniform(-3, 1, 20000)
    points[:, 3] = 0.0
    _same_detections(
        predictor.predict_points, heads[0], onnx_predictor.predict_points, heads[1], points
    )


def test_backend_key_builds_the_onnxruntime_model(demo_export, record):
    cfg, predictor, sample, report, out = demo_export
    onnx_cfg = _onnx_cfg(cfg, out)
    model = build_pillars_model(onnx_cfg)  # what --eval-only and the visualizer call
    assert isinstance(model, OnnxPointPillars) and not model.training
    assert len(model.state_dict()) == 0  # no parameters: the weights are in the graph
    assert isinstance(build_predictor(onnx_cfg), OnnxPillarsPredictor)
    assert type(build_predictor(cfg)) is PillarsPredictor
    _same_detections(predictor.model, predictor.model.head, model, model.postprocess.head, [sample])
    with pytest.raises(RuntimeError, match="inference only"):
        model.train()
    # an empty frame: no pillars, no boxes, no error
    empty = {k: v[:0] for k, v in sample.items() if k.startswith("voxel")}
    assert len(model([empty])[0]["instances"]) == len(predictor.model([empty])[0]["instances"])


def test_graph_and_config_must_agree(demo_export):
    cfg, predictor, sample, report, out = demo_export
    other = _onnx_cfg(cfg, out)
    other.INPUT.POINT_CLOUD_RANGE = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]
    with pytest.raises(ValueError, match="INPUT.POINT_CLOUD_RANGE"):
        OnnxPointPillars(other)
    missing = _onnx_cfg(cfg, os.path.join(out, "nothing_here.onnx"))
    with pytest.raises(FileNotFoundError, match="export_model.py"):
        OnnxPointPillars(missing)
    with pytest.raises(ValueError, match="MODEL.ONNX.PATH"):
        OnnxPointPillars(_onnx_cfg(cfg, ""))


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "onnxscript"])
def test_missing_package_is_a_clear_error(demo_export, monkeypatch, tmp_path, module):
    cfg, predictor, sample, report, out = demo_export
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(DeployDependencyError, match=f"'{module}'.*requirements-deploy.txt"):
        export_onnx(cfg, str(tmp_path), model=predictor.model, sample=sample)
    if module == "onnxruntime":
        with pytest.raises(DeployDependencyError, match="MODEL.BACKEND onnxruntime"):
            OnnxPointPillars(_onnx_cfg(cfg, out))


def test_export_cli_reports_errors(demo_export, monkeypatch, tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools", "deploy"))
    try:
        import export_model
    finally:
        sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert export_model.main(["--config-file", DEMO, "--output", str(tmp_path)]) == 1
    assert "onnxruntime" in capsys.readouterr().err


def test_not_exportable_model_is_a_clear_error(demo_export, tmp_path):
    cfg, predictor, sample, report, out = demo_export

    class Sparse(torch.nn.Module):  # a pillar encoder without the dense formulation
        out_channels = 64

        def forward(self, voxels, num_points, coords):
            return voxels.new_zeros(voxels.shape[0], 64)

    import copy

    model = copy.deepcopy(predictor.model)
    model.pillar_encoder = Sparse()
    with pytest.raises(NotExportableError, match="MODEL.PILLAR_FEATURE_NET.NAME.*forward_dense"):
        export_onnx(cfg, str(tmp_path), model=model, sample=sample)
    with pytest.raises(NotExportableError, match="no exportable path"):
        exportable_copy(torch.nn.Linear(2, 2))


def test_export_check_fails_above_tolerance(demo_export):
    cfg, predictor, sample, report, out = demo_export
    again = check_onnx(report.path, predictor.model, sample)  # what export_onnx ran
    assert again.num_pillars == report.num_pillars and again.worst_rel_diff <= 1e-4
    with pytest.raises(ExportCheckError, match="differs from eager PyTorch.*tolerance 1e-12"):
        check_onnx(report.path, predictor.model, sample, rtol=1e-12)


def test_select_providers():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers([], available) == available
    assert select_providers([], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider"], available) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="TensorrtExecutionProvider"):
        select_providers(["TensorrtExecutionProvider"], available)


# ------------------------------------------------------------------------------------------------
# the tools, end to end: export_model.py with MODEL.WEIGHTS, then train_net.py --eval-only with
# each back-end on a tiny synthetic nuScenes set gives the same detections and metrics
# ------------------------------------------------------------------------------------------------

TINY = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
    "INPUT.NUM_SWEEPS", "1",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "DATALOADER.NUM_WORKERS", "0",
    # an untrained model scores ~0.01 (focal prior): keep its boxes for the devkit
    "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
    "MODEL.ANCHOR3D_HEAD.NMS_PRE", "100",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "50",
]  # fmt: skip


def _run(tool, argv, datasets, timeout=600):
    import subprocess

    env = dict(os.environ, D2_PILLARS_DATASETS=datasets, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, tool)] + argv,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_tools_export_then_eval_only_with_onnxruntime(tmp_path):
    import json

    from d2_pillars.checkpoint import PillarsCheckpointer
    from d2_pillars.data.datasets import NUSCENES_SPEC, create_infos
    from d2_pillars.synthetic import make_synthetic_nuscenes

    datasets = tmp_path / "datasets"
    root = make_synthetic_nuscenes(
        str(datasets / "synthetic_nuscenes"),
        num_scenes=10,
        keyframes_per_scene=2,
        num_beams=8,
        azimuth_steps=128,
    )
    create_infos(NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=1, progress=False)
    torch.manual_seed(3)
    model = build_pillars_model(_cfg(DEMO, *TINY))
    PillarsCheckpointer(model, str(tmp_path)).save("weights")
    weights = str(tmp_path / "weights.pth")

    onnx_dir = str(tmp_path / "onnx")
    proc = _run(
        "tools/deploy/export_model.py",
        # the one-input dense pillar-net layout here (the other tests export the bucketed one)
        ["--config-file", DEMO, "--output", onnx_dir, "--pillar-net", "dense"]
        + [*TINY, "MODEL.WEIGHTS", weights],
        str(datasets),
    )
    assert "max relative difference" in proc.stdout

    def evaluate(name, argv):
        out = str(tmp_path / name)
        _run("tools/train_net.py", ["--eval-only"] + argv + ["OUTPUT_DIR", out], str(datasets))
        folder = os.path.join(out, "inference", "synthetic_nus_mini_val")
        with open(os.path.join(folder, "metrics_summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(folder, "results_nusc.json")) as f:
            return summary, json.load(f)["results"]

    eager, eager_results = evaluate(
        "eval_torch", ["--config-file", DEMO, *TINY, "MODEL.WEIGHTS", weights]
    )
    # the config.yaml the exporter wrote: MODEL.BACKEND onnxruntime, MODEL.ONNX.PATH set
    ours, our_results = evaluate(
        "eval_onnx", ["--config-file", os.path.join(onnx_dir, "config.yaml")]
    )
    assert ours["mean_ap"] == pytest.approx(eager["mean_ap"], abs=1e-6)
    assert ours["nd_score"] == pytest.approx(eager["nd_score"], abs=1e-6)
    assert sorted(our_results) == sorted(eager_results) and len(our_results) == 4
    for token, boxes in eager_results.items():
        assert len(our_results[token]) == len(boxes) > 0
        for a, b in zip(boxes, our_results[token]):
            assert a["detection_name"] == b["detection_name"]
            assert a["detection_score"] == pytest.approx(b["detection_score"], abs=1e-5)
            assert np.allclose(a["translation"], b["translation"], atol=1e-4)
