"""int8 export (d2_pillars.deploy.quantize, export_model.py --quantize int8), the one-to-one box
matching of its check, and MODEL.BACKEND openvino.

One float export of a seeded tiny model (the demo config on a +-16 m grid of 1 m pillars, one
sweep, a 16-channel FPN) is quantized twice: calibrated on real frames (accepted) and on frames
scaled by 1000 (refused by the check).
"""

import math
import os
import sys
import pytest
import torch

from detectron2.structures import Instances

from d2_pillars.deploy import MatchTolerance, QuantizationCheckError, export_int8, match_detections
from d2_pillars.deploy.quantize import _graph_links, dataset_samples
from d2_pillars.engine import PillarsTrainer, build_pillars_model, load_config
from d2_pillars.structures import LiDARBoxes

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")


def _instances(boxes, scores, classes):
    inst = Instances((1, 1))
    inst.pred_boxes3d = LiDARBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


CAR = [0.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.1]


def test_match_identical_and_moved_boxes():
    ref = _instances([CAR, [10.0, 5.0, -1.0, 1.0, 1.0, 1.0, 0.0]], [0.9, 0.6], [0, 1])
    same = match_detections(ref, ref)
    assert same.matched == same.reference_boxes == 2 and same.matched_share == 1.0
    assert same.worst_center_m == same.worst_score == same.worst_yaw_rad == 0.0
    assert same.failures(MatchTolerance()) == []
    # the second box 0.5 m away, slightly larger, turned by pi, lower score: still matched
    cand = _instances([CAR, [10.3, 5.4, -1.0, 1.1, 1.0, 1.0, math.pi]], [0.85, 0.5], [0, 1])
    r = match_detections(ref, cand)
    assert r.matched == 2
    assert r.worst_center_m == pytest.approx(0.5, abs=1e-5)
    assert r.worst_size_rel == pytest.approx(0.1, abs=1e-5)
    assert r.worst_yaw_rad == pytest.approx(math.pi, abs=1e-5)
    assert r.worst_score == pytest.approx(0.1, abs=1e-5)
    # moved beyond the distance, or another class: not matched
    far = _instances([[2.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.1]], [0.9], [0])
    other = _instances([CAR], [0.9], [1])
    for cand in (far, other):
        r = match_detections(_instances([CAR], [0.9], [0]), cand)
        assert r.matched == 0 and r.reference_boxes == 1
        assert "0 of 1 boxes matched" in r.failures(MatchTolerance())[0]


def test_match_is_one_to_one_and_skips_low_scores():
    # two reference cars 0.4 m apart, one candidate between them: one pair only
    ref = _instances([CAR, [0.4, 0.0, -1.0, 4.0, 2.0, 1.5, 0.1]], [0.9, 0.8], [0, 0])
    cand = _instances([[0.3, 0.0, -1.0, 4.0, 2.0, 1.5, 0.1]], [0.9], [0])
    r = match_detections(ref, cand)
    assert (r.matched, r.reference_boxes) == (1, 2)
    assert r.worst_center_m == pytest.approx(0.1, abs=1e-5)  # the nearer one
    # a reference box below min_score is not checked; a candidate of any score may match
    low = match_detections(ref, _instances([CAR], [0.05], [0]), min_score=0.85)
    assert (low.matched, low.reference_boxes) == (1, 1)
    r = match_detections(_instances([], [], []), cand)
    assert r.reference_boxes == 0 and r.matched_share == 1.0
    # the score tolerance
    tol = MatchTolerance(max_score_diff=0.1)
    assert "score difference" in low.failures(tol)[0]


# ------------------------------------------------------------------------------------------------
# the int8 export of a tiny model
# ------------------------------------------------------------------------------------------------

TINY = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", '("q8_train",)',
    "DATASETS.TEST", '("q8_val",)',
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
    "INPUT.NUM_SWEEPS", "1",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ANCHOR3D_HEAD.NMS_PRE", "100",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "50",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
#: every box of the seeded model is checked (scores spread around 0.5, see _model)
TOLERANCE = MatchTolerance(min_score=0.0, min_matched=0.8, max_score_diff=0.1)


@pytest.fixture(scope="module")
def tiny(register_small_synthetic, tmp_path_factory):
    """A seeded tiny model whose class logits are spread (bias 0, weights x 10: distinct
    scores around 0.5, so that every box is a real ranking, not a tie) and its int8 export,
    calibrated on 4 training frames and checked on 4 validation frames."""
    root = tmp_path_factory.mktemp("q8")
    register_small_synthetic(
        "nuscenes", root / "synthetic_nuscenes", "q8_val", "q8_train",
        num_scenes=10, keyframes_per_scene=2, azimuth_steps=128,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(DEMO, TINY)
    torch.manual_seed(0)
    model = build_pillars_model(cfg).eval()
    with torch.no_grad():
        model.head.conv_cls.bias.zero_()
        model.head.conv_cls.weight.mul_(10.0)
    out = str(root / "int8")
    report = export_int8(
        cfg, out, model=model, calibration_frames=4, check_frames=4, tolerance=TOLERANCE,
        progress=False,
    )  # fmt: skip
    yield cfg, model, out, report
    torch.set_num_threads(threads)


def test_int8_export_writes_a_checked_graph(tiny):
    import json

    import onnx

    cfg, _, out, report = tiny
    for name in (
        "model.onnx",
        "model_int8.onnx",
        "config.yaml",
        "config_float.yaml",
        "export.json",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    assert report.backend == "openvino" and report.failures == []
    assert report.calibration_dataset == "q8_train" and report.calibration_frames == 4
    assert report.check_dataset == "q8_val" and report.check["frames"] == 4
    assert report.check["reference_boxes"] > 50 and report.check["matched_share"] >= 0.8
    # by default nothing quantizable is kept in float
    assert report.quantized_nodes > 20 and report.float_nodes == []
    proto = onnx.load(report.path)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["d2_pillars"])
    assert meta["quantization"]["calibration_frames"] == 4
    written = json.load(open(os.path.join(out, "export.json")))
    assert written["check"]["matched"] == report.check["matched"]
    int8_cfg = load_config(os.path.join(out, "config.yaml"))
    assert int8_cfg.MODEL.BACKEND == "openvino"
    assert int8_cfg.MODEL.ONNX.PATH == os.path.abspath(report.path)
    assert load_config(os.path.join(out, "config_float.yaml")).MODEL.BACKEND == "onnxruntime"


def test_int8_graph_transposes_the_int8_canvas_and_leaves_the_outputs_float(tiny):
    """The scatter's NHWC -> NCHW Transpose feeds only quantized convolutions: it is quantized
    (the int8 canvas is transposed, with one scale before and after); the head's output
    transposes are not (no quantization on a graph output's path through them)."""
    import onnx
    from onnx import numpy_helper

    _, _, _, report = tiny
    proto = onnx.load(report.path)
    producer, consumers = _graph_links(proto)
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    quantized = [
        t
        for t in transposes
        if getattr(producer.get(t.input[0]), "op_type", "") == "DequantizeLinear"
    ]
    assert len(quantized) == 1  # the canvas
    (t,) = quantized
    dq_in = producer[t.input[0]]
    (q_out,) = consumers[t.output[0]]
    assert q_out.op_type == "QuantizeLinear"
    assert init[dq_in.input[1]] == init[q_out.input[1]]  # one scale
    assert all(
        c.op_type == "Conv" for q in consumers[q_out.output[0]] for c in consumers[q.output[0]]
    )
    for t in transposes:
        if t is not quantized[0]:
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(t.output[0], []))


def _op(node):
    return getattr(node, "op_type", None)


def test_int8_head_outputs_leave_the_graph_in_float(tiny):
    """Each head convolution is int8 (its input and weights dequantized from int8) but its output
    goes on in float: no QuantizeLinear between it and the graph output (the logits and box
    deltas are not rounded to 256 levels)."""
    from d2_pillars.deploy.quantize import _nodes_in_modules

    import onnx

    _, _, out, report = tiny
    float_proto = onnx.load(os.path.join(out, "model.onnx"))
    head = set(_nodes_in_modules(float_proto, ["head"]))
    proto = onnx.load(report.path)
    producer, consumers = _graph_links(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name in head]
    assert len(convs) == 9  # cls, reg, dir at 3 levels
    for conv in convs:
        assert _op(producer.get(conv.input[0])) == "DequantizeLinear"  # int8 input
        assert _op(producer.get(conv.input[1])) == "DequantizeLinear"  # int8 weights
        assert all(_op(c) != "QuantizeLinear" for c in consumers[conv.output[0]])
    outputs = {o.name for o in proto.graph.output}
    for name in outputs:
        node = producer[name]
        while node.op_type != "Conv":  # Reshape / Transpose back to the convolution
            assert node.op_type in ("Reshape", "Transpose"), node.op_type
            node = producer[node.input[0]]
        assert node.name in head


def test_int8_pillar_net_keeps_its_first_layer_in_float(tiny, tmp_path):
    """The pillar net's per-point linear layers after the first are int8 (input and weights
    dequantized from int8); the first layer, fed with metric coordinates, stays float32;
    ``float_modules=["pillar_net"]`` keeps them all in float."""
    from d2_pillars.deploy.quantize import (
        _nodes_in_modules,
        _pillar_feature_linears,
        quantize_graph,
    )

    import onnx

    cfg, _, out, report = tiny
    float_path = os.path.join(out, "model.onnx")
    float_proto = onnx.load(float_path)
    pillar_net = set(_nodes_in_modules(float_proto, ["pillar_net"]))
    later = set(_pillar_feature_linears(float_proto))
    matmuls = {n.name for n in float_proto.graph.node if n.op_type == "MatMul"} & pillar_net
    # one per bucket of the bucketed layout for each of the two layers
    assert later and len(matmuls) == 2 * len(later)

    def int8_inputs(path):
        proto = onnx.load(path)
        producer, _ = _graph_links(proto)
        return {
            n.name: [_op(producer.get(i)) == "DequantizeLinear" for i in n.input[:2]]
            for n in proto.graph.node
            if n.name in matmuls
        }

    default = int8_inputs(report.path)
    assert all(default[n] == [True, True] for n in later)
    assert all(default[n] == [False, False] for n in matmuls - later)
    kept = str(tmp_path / "pillar_float.onnx")
    samples = list(dataset_samples(cfg, "q8_train", 1))
    float_nodes, _, _ = quantize_graph(float_path, kept, samples, float_modules=["pillar_net"])
    assert later <= set(float_nodes)
    assert all(v == [False, False] for v in int8_inputs(kept).values())


def test_float_modules_that_keep_every_convolution_float_are_refused(tiny, tmp_path):
    cfg, model, _, _ = tiny
    with pytest.raises(ValueError, match="nothing is left to quantize"):
        export_int8(
            cfg, str(tmp_path / "x"), model=model, float_modules=["pillar_net", "backbone", "head"],
            calibration_frames=1, check_frames=1, progress=False,
        )  # fmt: skip


def test_float_modules_select_by_module_path(tiny):
    """``float_modules`` names top-level modules or dotted submodules (the name scopes of the
    exported nodes): ``head.conv_reg`` is the box regression of every level."""
    from d2_pillars.deploy.quantize import _nodes_in_modules

    import onnx

    _, _, out, _ = tiny
    proto = onnx.load(os.path.join(out, "model.onnx"))
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    head = set(_nodes_in_modules(proto, ["head"])) & convs
    reg = set(_nodes_in_modules(proto, ["head.conv_reg"])) & convs
    cls_dir = set(_nodes_in_modules(proto, ["head.conv_cls", "head.conv_dir"])) & convs
    assert len(head) == 9 and len(reg) == 3 and len(cls_dir) == 6
    assert reg | cls_dir == head and not reg & cls_dir
    assert not set(_nodes_in_modules(proto, ["head.conv_reg", "backbone"])) & cls_dir
    with pytest.raises(ValueError, match="name no module"):
        _nodes_in_modules(proto, ["head.conv"])  # whole names only


def test_float_modules_that_name_nothing_are_refused_before_the_export(tiny, tmp_path):
    """A float module that is not a module of the network (a typo, or config overrides that
    ``--float-modules`` swallowed) stops the export at once, naming the valid modules."""
    cfg, model, _, _ = tiny
    for bad in (["MODEL.WEIGHTS", "model.pth"], ["head.conv_regression"]):
        with pytest.raises(ValueError, match="name no module.*head.conv_reg"):
            export_int8(cfg, str(tmp_path / "x"), model=model, float_modules=bad, progress=False)
    assert not os.path.exists(tmp_path / "x")  # nothing exported


def test_int8_export_refuses_a_broken_calibration(tiny, tmp_path):
    """Calibrated on points scaled by 1000, the activation ranges are so wide that the real
    frames' activations fall into a few int8 steps: the check refuses the graph."""
    cfg, model, out, _ = tiny
    broken = [dict(s, voxels=s["voxels"] * 1000) for s in dataset_samples(cfg, "q8_train", 2)]
    with pytest.raises(QuantizationCheckError, match="boxes matched"):
        export_int8(
            cfg, str(tmp_path), model=model, calibration_samples=broken, check_frames=2,
            tolerance=TOLERANCE, float_graph=os.path.join(out, "model.onnx"), progress=False,
        )  # fmt: skip
    # refused, but the graph and the figures are kept for inspection
    assert os.path.isfile(tmp_path / "model_int8.onnx") and os.path.isfile(tmp_path / "export.json")


def test_int8_config_runs_through_eval_only(tiny, tmp_path):
    """The written config.yaml builds MODEL.BACKEND openvino and evaluates like the eager float
    model (tools/train_net.py --eval-only runs PillarsTrainer.test on build_pillars_model)."""
    cfg, model, out, _ = tiny
    int8_cfg = load_config(os.path.join(out, "config.yaml"), ["OUTPUT_DIR", str(tmp_path / "q")])
    int8_model = build_pillars_model(int8_cfg)
    assert type(int8_model).__name__ == "OpenVinoPointPillars"
    ours = PillarsTrainer.test(int8_cfg, int8_model)["nuscenes"]
    float_cfg = cfg.clone()
    float_cfg.OUTPUT_DIR = str(tmp_path / "f")
    theirs = PillarsTrainer.test(float_cfg, model)["nuscenes"]
    assert ours["NDS"] == pytest.approx(theirs["NDS"], abs=0.02)
    assert ours["mAP"] == pytest.approx(theirs["mAP"], abs=0.02)


def test_openvino_runs_the_float_graph_like_onnxruntime(tiny):
    from d2_pillars.deploy import OnnxPointPillars, OpenVinoPointPillars

    cfg, _, out, _ = tiny
    float_cfg = load_config(os.path.join(out, "config_float.yaml"))
    sample = dataset_samples(cfg, "q8_val", 1)
    (sample,) = list(sample)
    a = OnnxPointPillars(float_cfg).run_network(*_inputs(sample))
    b = OpenVinoPointPillars(float_cfg).run_network(*_inputs(sample))
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-4 * float(x.abs().max()) + 1e-6)
    with pytest.raises(ValueError, match="INFERENCE_PRECISION"):
        OpenVinoPointPillars(float_cfg, precision="int4")


def test_openvino_shared_outputs_are_decoded_before_the_next_frame(tiny):
    """forward() runs the graph without copying its outputs (views of the request's buffers,
    overwritten by the next inference): two frames in one call give what each gives alone."""
    from d2_pillars.deploy import OpenVinoPointPillars, model_inputs

    cfg, _, out, _ = tiny
    model = OpenVinoPointPillars(load_config(os.path.join(out, "config.yaml")))
    a, b = list(dataset_samples(cfg, "q8_val", 2))
    feeds = model.graph_feeds(*model_inputs(a))
    copied = model.run_graph(feeds)
    shared = model.run_graph(feeds, copy=False)
    assert all(torch.equal(x, y) for x, y in zip(copied, shared))
    both = model([a, b])
    for alone, together in zip((model([a])[0], model([b])[0]), both):
        assert torch.equal(alone["instances"].scores, together["instances"].scores)
        assert torch.equal(
            alone["instances"].pred_boxes3d.tensor, together["instances"].pred_boxes3d.tensor
        )
    assert len(both[0]["instances"]) != len(both[1]["instances"]) or not torch.equal(
        both[0]["instances"].scores, both[1]["instances"].scores
    )  # two different frames


def _inputs(sample):
    from d2_pillars.deploy import model_inputs

    return model_inputs(sample)


def test_export_cli_exit_status_when_refused(monkeypatch, capsys, tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools", "deploy"))
    try:
        import export_model
    finally:
        sys.path.pop(0)

    def refuse(*args, **kwargs):
        raise QuantizationCheckError("the int8 graph x is refused: 1 of 9 boxes matched")

    monkeypatch.setattr(export_model, "export_int8", refuse)
    argv = ["--config-file", DEMO, "--output", str(tmp_path), "--quantize", "int8"]
    assert export_model.main(argv) == 1
    assert "refused" in capsys.readouterr().err

    # --float-modules: the default, 'none', and names of their own
    seen = []
    monkeypatch.setattr(export_model, "export_int8", lambda *a, **k: seen.append(k) or refuse())
    for extra, expected in (
        ([], []),
        (["--float-modules", "none"], []),
        (["--float-modules", "head", "backbone"], ["head", "backbone"]),
    ):
        assert export_model.main(argv + extra) == 1
        assert seen.pop()["float_modules"] == expected
