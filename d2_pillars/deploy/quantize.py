"""Static int8 quantization of the exported graph, calibrated on real frames, checked on others.

:func:`export_int8` (``tools/deploy/export_model.py --quantize int8``):

1. exports and checks the float graph (:func:`~d2_pillars.deploy.export_onnx`:
   ``model.onnx``, ``config_float.yaml``);
2. calibrates and quantizes it with onnxruntime's static quantizer into ``model_int8.onnx``
   (:func:`quantize_graph`): QDQ format, int8 weights per output channel (symmetric), uint8
   activations with min-max ranges over the calibration frames (``--calibration-frames`` of the
   config's training set, the test-time mapper: no augmentation). Quantized: the convolutions
   (``Conv``, ``ConvTranspose``: backbone, neck, head), the pillar net's per-point linear layers
   after its first (their input is the previous layer's features; the first one's input holds
   metric coordinates and stays in float), and the layout ``Transpose`` that feeds the first
   convolutions (the scatter's NHWC canvas to NCHW: transposed in int8, which OpenVINO merges
   into its own layout change); the modules of ``float_modules`` (:data:`DEFAULT_FLOAT_MODULES`:
   none) stay in float. The head's outputs leave the graph in float: the quantizer's
   QuantizeLinear / DequantizeLinear pair on each head convolution's output is removed, so its
   int32 accumulators are scaled to float instead of being rounded to 256 levels;
3. writes ``config.yaml`` for the int8 graph (``MODEL.BACKEND`` openvino or onnxruntime,
   ``MODEL.ONNX.PATH`` the int8 graph), which ``--eval-only``, the predictor and the visualizer
   run as they run the float graph;
4. runs the int8 graph in that back-end and the eager float model on held-out frames (the
   config's test set), matches their boxes one to one (:func:`match_detections`) and refuses the
   graph (:class:`QuantizationCheckError`) when fewer than ``min_matched`` of the float model's
   boxes scoring ``>= min_score`` have an int8 box of their class within ``max_center_distance``,
   or the 95th percentile of the matched pairs' score differences exceeds ``max_score_diff``
   (:class:`MatchTolerance`).
"""

import json
import logging
import numpy as np
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, Optional
import torch

from ..utils.file_io import atomic_open
from ._deps import require
from .export import (
    METADATA_KEY,
    OPSET,
    ExportCheckError,
    _build_eager_model,
    export_onnx,
    model_inputs,
    points_only,
    write_metadata,
)
from .matching import DetectionMatchReport, MatchTolerance, match_detections
from .network import graph_inputs, input_names, network_module_names

__all__ = [
    "QUANTIZE_MODES",
    "INT8_BACKENDS",
    "QuantizationCheckError",
    "QuantizationReport",
    "PillarsCalibrationReader",
    "dataset_samples",
    "MappedFrames",
    "quantize_graph",
    "DEFAULT_FLOAT_MODULES",
    "check_quantized",
    "export_int8",
]

logger = logging.getLogger(__name__)

#: Values of ``export_model.py --quantize``.
QUANTIZE_MODES = ("none", "int8")
#: Back-ends the int8 config may name; openvino is the default (measured faster on the int8
#: graph, docs/performance.md).
INT8_BACKENDS = ("openvino", "onnxruntime")
#: File names in the export folder.
INT8_GRAPH, FLOAT_CONFIG = "model_int8.onnx", "config_float.yaml"


class QuantizationCheckError(ExportCheckError):
    """The int8 graph's detections differ from the float model's beyond the tolerance."""


@dataclass
class QuantizationReport:
    """What :func:`export_int8` wrote and measured."""

    path: str
    float_path: str
    backend: str
    calibration_dataset: str
    calibration_frames: int
    check_dataset: str
    #: graph nodes left in float (of the quantizable types) and the number quantized
    float_nodes: List[str] = field(default_factory=list)
    quantized_nodes: int = 0
    quantize_seconds: float = 0.0
    tolerance: dict = field(default_factory=dict)
    #: :meth:`DetectionMatchReport.as_dict` of the held-out frames
    check: dict = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)
    float_export: dict = field(default_factory=dict)

    def summary(self) -> str:
        c = self.check
        return (
            f"int8 ({self.backend}) vs float on {c.get('frames', 0)} frames of "
            f"{self.check_dataset}: {c.get('matched', 0)}/{c.get('reference_boxes', 0)} boxes "
            f"matched ({c.get('matched_share', 1.0):.1%}), worst centre "
            f"{c.get('worst_center_m', 0):.3f} m, size {c.get('worst_size_rel', 0):.1%}, yaw "
            f"{c.get('worst_yaw_rad', 0):.3f} rad, score {c.get('worst_score', 0):.3f} (95th "
            f"percentile {c.get('p95_score', 0):.3f}, mean {c.get('mean_score', 0):.3f})"
        )


def _evenly_spaced(total: int, n: int) -> List[int]:
    if n <= 0 or total <= 0:
        return []
    if n >= total:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, n).round()]


def dataset_samples(cfg, dataset_name: str, num_frames: int, *, skip: Sequence[str] = ()):
    """``num_frames`` frames of the registered dataset ``dataset_name``, evenly spaced over it,
    run through the test-time :class:`PointCloudMapper` (no augmentation; annotations dropped)
    when read (:class:`MappedFrames`). Frames whose ``sample_token`` is in
    ``skip`` are left out."""
    from detectron2.data import DatasetCatalog

    from ..data.mapper import PointCloudMapper

    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset_name!r} is not registered: pass a registered name (the config's "
            "DATASETS.TRAIN / DATASETS.TEST, after tools/create_data.py) with "
            "--calibration-dataset / --check-dataset"
        )
    records = [r for r in DatasetCatalog.get(dataset_name) if r.get("sample_token") not in skip]
    if not records:
        raise ValueError(f"dataset {dataset_name!r} has no frame to calibrate or check on")
    picked = [records[i] for i in _evenly_spaced(len(records), num_frames)]
    return MappedFrames(picked, PointCloudMapper(cfg, is_train=False))


class MappedFrames(Sequence):
    """Dataset records, each run through ``mapper`` (without its annotations) when it is read."""

    def __init__(self, records: Sequence[dict], mapper):
        self.records, self.mapper = list(records), mapper

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return MappedFrames(self.records[index], self.mapper)
        return self.mapper(points_only(self.records[index]))


def _feeds(sample, variant, max_points):
    inputs = graph_inputs(*model_inputs(sample), variant)
    return {n: t.contiguous().numpy() for n, t in zip(input_names(variant, max_points), inputs)}


class PillarsCalibrationReader:
    """onnxruntime's calibration data reader (a ``CalibrationDataReader``: it has ``get_next``)
    over mapper outputs: each ``get_next`` returns the graph inputs of the next sample
    (:func:`graph_inputs` of the graph's pillar-net layout ``variant``), with a tqdm bar."""

    def __init__(self, samples: Iterable[dict], variant: str, max_points: int, progress=True):
        from tqdm import tqdm

        total = len(samples) if hasattr(samples, "__len__") else None
        bar = tqdm(
            samples, total=total, desc="int8 calibration", unit="frame", disable=not progress
        )
        self._iter = (_feeds(s, variant, max_points) for s in bar)
        self.frames = 0

    def get_next(self):
        feeds = next(self._iter, None)
        self.frames += feeds is not None
        return feeds


def _unknown_modules_error(unknown: Sequence[str]) -> ValueError:
    return ValueError(
        f"float modules {sorted(unknown)} name no module of the network: use pillar_net, "
        "scatter, backbone, head or a dotted submodule such as head.conv_reg (export_model.py: "
        "--float-modules none keeps nothing in float; --float-modules takes every word up to the "
        "next option, so config overrides KEY VALUE go last, after another option)"
    )


def _check_float_modules(model, float_modules: Sequence[str]):
    """Refuse names that are no module of the network, before the export and calibration."""
    if isinstance(float_modules, str):
        raise TypeError(
            f"float_modules must be a sequence of names, got the string {float_modules!r}"
        )
    unknown = set(float_modules) - set(network_module_names(model))
    if unknown:
        raise _unknown_modules_error(unknown)


def _nodes_in_modules(proto, modules: Sequence[str]) -> List[str]:
    """Names of the graph's nodes exported from the modules ``modules`` of
    :class:`PillarsNetwork`: top-level (``pillar_net``, ``scatter``, ``backbone``, ``head``) or
    dotted submodule paths (``head.conv_reg``), read from the name scopes torch.onnx stores in
    each node's metadata."""
    import ast

    wanted = set(modules)
    out, seen = [], set()
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        hit = wanted.intersection(scopes[1:])
        if hit:
            seen |= hit
            out.append(node.name)
    if wanted - seen:
        raise _unknown_modules_error(wanted - seen)
    return out


#: op types quantized (the dense part's convolutions; see also _pillar_feature_linears)
QUANTIZED_OPS = ("Conv", "ConvTranspose")
#: Modules kept in float by default: none. On the demo model (README "int8") every convolution in
#: int8 with the head's outputs left in float scores as the box regression kept in float (mAP and
#: NDS within 0.0001 of each other), ~12 ms less per 10-sweep frame (AVX512-VNNI, 2 threads);
#: the box regression's 8-bit output, not its weights, was what cost 0.005 mAP and up to 56% in
#: box size before the outputs were left in float (docs/performance.md).
DEFAULT_FLOAT_MODULES = ()


def quantize_graph(
    float_path: str,
    output_path: str,
    samples: Iterable[dict],
    *,
    float_modules: Sequence[str] = DEFAULT_FLOAT_MODULES,
    progress: bool = True,
):
    """
    Static int8 quantization of the exported float graph (onnxruntime's ``quantize_static``).

    Args:
        float_path: ``model.onnx`` of :func:`export_onnx`.
        output_path: the int8 QDQ graph written.
        samples: calibration frames (test-time mapper outputs).
        float_modules: modules of the network whose convolutions (and, for ``pillar_net``,
            linear layers) stay in float: top-level (``pillar_net``, ``backbone``, ``head``) or
            dotted paths (``head.conv_reg``); a name that matches no module is an error
            (ValueError).

    Returns:
        tuple: (the names of the quantizable nodes left in float, the number quantized, the
        number of calibration frames read).
    """
    onnx = require("onnx", "int8 quantization")
    q = require("onnxruntime.quantization", "int8 quantization")
    proto = onnx.load(float_path)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    convs = [n.name for n in proto.graph.node if n.op_type in QUANTIZED_OPS]
    candidates = convs + _pillar_feature_linears(proto)
    excluded = sorted(set(_nodes_in_modules(proto, float_modules)) & set(candidates))
    quantized = [n for n in candidates if n not in excluded]
    if not quantized:
        # (onnxruntime reads an empty nodes_to_quantize as "every node")
        raise ValueError(
            f"float modules {list(float_modules)} keep every convolution and linear layer of "
            f"{float_path} in float: nothing is left to quantize (export without --quantize "
            "int8 for the float graph, or keep fewer modules in float)"
        )
    layout = _transposes_into(proto, quantized)
    reader = PillarsCalibrationReader(
        samples, metadata["pillar_net"], metadata["max_points_per_voxel"], progress=progress
    )
    hint = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        _quantize_static(q, float_path, output_path, reader, quantized + layout)
    finally:
        logging.getLogger().removeFilter(hint)
    if reader.frames == 0:
        raise ValueError("int8 calibration: no calibration frame was given")
    head = set(_nodes_in_modules(proto, ["head"])) & set(quantized)
    if head:
        _float_outputs_of(output_path, head)
    return excluded, len(candidates) - len(excluded), reader.frames


class _DropPreprocessingHint(logging.Filter):
    """onnxruntime's quantizer logs twice, on the root logger, that a graph could be
    "pre-processed" (symbolic shape inference, for its own kernels): not an action for users."""

    def filter(self, record):
        return "pre-processing" not in record.getMessage()


def _graph_links(proto):
    """``(producer, consumers)`` of an ONNX graph: the node that writes each tensor name, and the
    list of nodes that read it."""
    producer, consumers = {}, {}
    for node in proto.graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _pillar_feature_linears(proto) -> List[str]:
    """The pillar net's per-point ``MatMul`` nodes after its first layer: those whose input is a
    ReLU output (the previous layer's point features, of the scale batch norm gives them), not
    the raw points. The first layer stays in float: its input holds metric coordinates (up to
    ~50 m, with offsets of centimetres in the pillar), which 8 bits cannot hold. With VNNI, the
    64 -> 64 layer of a 10-sweep frame (0.3 M point rows) takes ~20 ms less in int8
    (docs/performance.md)."""
    producer, _ = _graph_links(proto)
    initializers = {t.name for t in proto.graph.initializer}
    pillar_net = set(_nodes_in_modules(proto, ["pillar_net"]))
    return [
        node.name
        for node in proto.graph.node
        if node.op_type == "MatMul"
        and node.name in pillar_net
        and node.input[1] in initializers
        and getattr(producer.get(node.input[0]), "op_type", None) == "Relu"
    ]


def _float_outputs_of(path: str, convs: Iterable[str]):
    """Drop the QuantizeLinear -> DequantizeLinear pair that the quantizer puts on the output of
    each of ``convs`` (the head's convolutions, whose outputs are the graph's): their int32
    accumulators are then scaled straight to float, instead of being rounded to 256 levels of a
    range calibrated over every anchor (class logits, box deltas) before leaving the graph. The
    graph is rewritten in place."""
    onnx = require("onnx", "int8 quantization")
    proto = onnx.load(path)
    nodes = proto.graph.node
    _, consumers = _graph_links(proto)
    graph_outputs = {o.name for o in proto.graph.output}
    drop = []
    for conv in (n for n in nodes if n.name in convs):
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        quant = users[0]
        dequants = consumers.get(quant.output[0], [])
        if not dequants or any(
            d.op_type != "DequantizeLinear" or d.output[0] in graph_outputs for d in dequants
        ):
            continue
        for dq in dequants:
            for user in consumers.get(dq.output[0], []):
                user.input[:] = [conv.output[0] if i == dq.output[0] else i for i in user.input]
        drop += [quant, *dequants]
    for node in drop:
        nodes.remove(node)
    onnx.checker.check_model(proto)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def _transposes_into(proto, quantized: Sequence[str]) -> List[str]:
    """The ``Transpose`` nodes whose every consumer is one of the ``quantized`` nodes: the
    scatter's canvas, NHWC in the graph, into the first convolutions. Quantized there, the int8
    canvas is transposed instead of the float one, and OpenVINO folds that transposition into
    the reorder to its own NHWC layout: ~20 ms less per 10-sweep frame (AVX2, 2 threads) for the
    same values (the quantization takes the same scale before and after a transposition)."""
    wanted = set(quantized)
    _, consumers = _graph_links(proto)
    return [
        node.name
        for node in proto.graph.node
        if node.op_type == "Transpose"
        and consumers.get(node.output[0])
        and wanted.issuperset(c.name for c in consumers[node.output[0]])
    ]


def _quantize_static(q, float_path, output_path, reader, nodes):
    """``quantize_static`` of exactly ``nodes`` (convolutions, the pillar net's later linear
    layers, layout transposes)."""
    q.quantize_static(
        float_path,
        output_path,
        reader,
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        op_types_to_quantize=[*QUANTIZED_OPS, "MatMul", "Transpose"],
        nodes_to_quantize=list(nodes),
        # a Transpose takes its output's quantization from its input: the scatter's output has
        # none of its own, so it is quantized here (calibrated as every other tensor)
        extra_options={"ForceQuantizeNoInputCheck": True},
        # min-max: the calibration graph reduces each tensor to its min and max in the graph
        # (a few scalars per frame are kept, not the activations)
        calibrate_method=q.CalibrationMethod.MinMax,
    )


@torch.no_grad()
def check_quantized(float_model, int8_model, samples: Iterable[dict], tolerance: MatchTolerance):
    """Run both models on each sample and match their detections (:func:`match_detections`);
    returns the :class:`DetectionMatchReport`."""
    report = DetectionMatchReport()
    for sample in samples:
        (ref,) = float_model([sample])
        (cand,) = int8_model([sample])
        match_detections(
            ref["instances"].to("cpu"),
            cand["instances"].to("cpu"),
            min_score=tolerance.min_score,
            max_center_distance=tolerance.max_center_distance,
            report=report,
        )
    return report


def export_int8(
    cfg,
    output_dir: str,
    *,
    model=None,
    backend: str = "openvino",
    calibration_dataset: Optional[str] = None,
    calibration_frames: int = 32,
    calibration_samples: Optional[Iterable[dict]] = None,
    check_dataset: Optional[str] = None,
    check_frames: int = 8,
    check_samples: Optional[Iterable[dict]] = None,
    tolerance: Optional[MatchTolerance] = None,
    float_modules: Sequence[str] = DEFAULT_FLOAT_MODULES,
    float_graph: Optional[str] = None,
    sample: Optional[dict] = None,
    pillar_net: str = "bucketed",
    rtol: float = 1e-4,
    opset: int = OPSET,
    progress: bool = True,
    raise_error: bool = True,
) -> QuantizationReport:
    """
    Export ``cfg``'s network (weights ``MODEL.WEIGHTS``, or ``model``) as a calibrated int8 graph
    to ``output_dir`` and check it against the float model (see the module doc).

    Args:
        backend: ``MODEL.BACKEND`` of the written ``config.yaml`` and of the check
            (:data:`INT8_BACKENDS`).
        calibration_dataset: registered dataset to calibrate on (default ``DATASETS.TRAIN[0]``).
        calibration_frames: frames of it, evenly spaced.
        calibration_samples: mapper outputs to calibrate on instead of the dataset's.
        check_dataset: held-out dataset of the check (default ``DATASETS.TEST[0]``).
        check_frames: frames of it, evenly spaced.
        check_samples: mapper outputs to check on instead of the dataset's.
        tolerance: the check's :class:`MatchTolerance` (default its defaults).
        float_modules: modules whose convolutions stay in float (see :func:`quantize_graph`).
        float_graph: the float ``model.onnx`` already exported from this same model (by
            :func:`export_onnx`) to quantize, instead of exporting it again.
        sample, pillar_net, rtol, opset: for the float export (:func:`export_onnx`).
        raise_error: raise :class:`QuantizationCheckError` past the tolerance (the report and
            the graph are written first).

    Returns:
        QuantizationReport (also written to ``output_dir/export.json``).
    """
    if backend not in INT8_BACKENDS:
        raise ValueError(f"backend must be one of {INT8_BACKENDS}, got {backend!r}")
    from .runtime import GRAPH_BACKENDS

    if backend == "openvino":
        from . import openvino_runtime  # noqa: F401  (registers the back-end)

    tolerance = tolerance or MatchTolerance()
    if model is None:
        model = _build_eager_model(cfg)
    _check_float_modules(model, float_modules)  # before the minutes of export and calibration
    if float_graph is None:
        float_report = export_onnx(
            cfg, output_dir, model=model, sample=sample, pillar_net=pillar_net, rtol=rtol,
            opset=opset, config_name=FLOAT_CONFIG,
        )  # fmt: skip
        float_graph, float_export = float_report.path, dict(
            asdict(float_report), worst_rel_diff=float_report.worst_rel_diff
        )
    else:
        os.makedirs(output_dir, exist_ok=True)
        float_export = {"path": float_graph, "reused": True}
    calibration_dataset = calibration_dataset or (
        cfg.DATASETS.TRAIN[0] if calibration_samples is None else "(given samples)"
    )
    check_dataset = check_dataset or (
        cfg.DATASETS.TEST[0] if check_samples is None else "(given samples)"
    )
    if calibration_samples is None:
        calibration_samples = dataset_samples(cfg, calibration_dataset, calibration_frames)
    if check_samples is None:
        check_samples = dataset_samples(cfg, check_dataset, check_frames)

    path = os.path.join(output_dir, INT8_GRAPH)
    start = time.perf_counter()
    float_nodes, quantized, frames = quantize_graph(
        float_graph, path, calibration_samples, float_modules=float_modules,
        progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    onnx = require("onnx", "int8 quantization")
    metadata = json.loads(
        {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}[
            METADATA_KEY
        ]
    )
    metadata["quantization"] = {
        "precision": "int8",
        "format": "QDQ",
        "weights": "int8 per output channel, symmetric",
        "activations": "uint8 per tensor, min-max",
        "calibration_dataset": calibration_dataset,
        "calibration_frames": frames,
        "float_modules": list(float_modules),
    }
    write_metadata(path, metadata)

    int8_cfg = cfg.clone()
    int8_cfg.defrost()
    int8_cfg.MODEL.BACKEND = backend
    int8_cfg.MODEL.ONNX.PATH = os.path.abspath(path)
    with atomic_open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(int8_cfg.dump())

    run_cfg = int8_cfg.clone()
    run_cfg.MODEL.WEIGHTS = ""  # the graph carries its weights (no warning)
    run_cfg.MODEL.DEVICE = "cpu"
    if backend == "onnxruntime":
        run_cfg.MODEL.ONNX.PROVIDERS = ["CPUExecutionProvider"]
    int8_model = GRAPH_BACKENDS[backend](run_cfg)
    match = check_quantized(model, int8_model, check_samples, tolerance)
    report = QuantizationReport(
        path=path,
        float_path=float_graph,
        backend=backend,
        calibration_dataset=calibration_dataset,
        calibration_frames=frames,
        check_dataset=check_dataset,
        float_nodes=float_nodes,
        quantized_nodes=quantized,
        quantize_seconds=seconds,
        tolerance=asdict(tolerance),
        check=match.as_dict(),
        failures=match.failures(tolerance),
        float_export=float_export,
    )
    with atomic_open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(asdict(report), f, indent=1)
    logger.info("%s", report.summary())
    if raise_error and report.failures:
        raise QuantizationCheckError(
            f"the int8 graph {path} is refused: " + "; ".join(report.failures)
            + f" (tolerance {asdict(tolerance)}; {report.summary()}). Calibrate on more or more "
            "representative frames (--calibration-frames, --calibration-dataset), or keep more "
            "modules in float"
        )  # fmt: skip
    return report
