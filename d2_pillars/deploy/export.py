"""ONNX export of the PointPillars network, checked against eager PyTorch with onnxruntime.

:func:`export_onnx` writes ``model.onnx`` (one graph: pillar net, scatter, backbone, neck, head
convolutions; opset :data:`OPSET`; the number of pillars is a dynamic axis), ``config.yaml``
(the config it was exported with, ready for ``MODEL.BACKEND onnxruntime``) and ``export.json``
(the check's figures). Before it reports success it runs the graph with onnxruntime on a real
frame and compares every output with the eager model's (the blocked pillar net of
``PillarFeatureNet.forward``, the eager scatter, backbone and head): the export fails when the
largest difference exceeds ``rtol`` times the output's largest magnitude.
"""

import json
import logging
import numpy as np
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence
import torch

from ..layers import collate_voxels
from ..structures import BOX_CONVENTION_VERSION
from ._deps import require
from .network import NotExportableError, exportable_copy, graph_inputs, input_names

__all__ = [
    "OPSET",
    "METADATA_KEY",
    "ExportCheckError",
    "ExportReport",
    "export_onnx",
    "model_inputs",
    "synthetic_check_sample",
    "synthetic_check_record",
    "points_only",
    "compare_outputs",
    "eager_network_outputs",
    "exported_config_values",
    "format_report",
    "check_onnx",
]

logger = logging.getLogger(__name__)

#: ONNX opset of the exported graph (ScatterND with reduction "none" needs >= 16; 18 is the
#: torch.onnx exporter's default and is supported by onnxruntime >= 1.14 and TensorRT >= 8.6).
OPSET = 18
#: Key of the JSON metadata stored in the graph's ``metadata_props``.
METADATA_KEY = "d2_pillars"
METADATA_VERSION = 1

#: Config values the graph depends on; the onnxruntime back-end refuses a config that differs.
GRAPH_CONFIG_KEYS = (
    "INPUT.POINT_FEATURES",
    "INPUT.POINT_CLOUD_RANGE",
    "INPUT.VOXEL_SIZE",
    "INPUT.MAX_POINTS_PER_VOXEL",
    "MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS",
    "MODEL.ANCHOR3D_HEAD.NUM_CLASSES",
    "MODEL.ANCHOR3D_HEAD.BOX_CODE_SIZE",
    "MODEL.ANCHOR3D_HEAD.IN_FEATURES",
)


class ExportCheckError(RuntimeError):
    """onnxruntime's outputs differ from eager PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: str
    opset: int
    num_pillars: List[int]
    #: per output name, the largest |onnxruntime - torch| over the checked frames
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    #: per output name, max_abs_diff / the largest |torch| value of that output
    max_rel_diff: Dict[str, float] = field(default_factory=dict)
    rtol: float = 1e-4
    export_seconds: float = 0.0

    @property
    def worst_rel_diff(self) -> float:
        return max(self.max_rel_diff.values()) if self.max_rel_diff else 0.0


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def exported_config_values(cfg) -> Dict[str, object]:
    """The :data:`GRAPH_CONFIG_KEYS` values of ``cfg`` (JSON-comparable)."""
    return json.loads(json.dumps({k: _value(cfg, k) for k in GRAPH_CONFIG_KEYS}))


def model_inputs(sample: dict):
    """Graph inputs of one mapper output: ``(voxels float32 (V, M, C), num_points int32 (V,),
    coords int32 (V, 4))`` on the CPU, batch column 0 (the eager model's ``batch_voxels``)."""
    for k in ("voxels", "voxel_coords", "voxel_num_points"):
        if k not in sample:
            raise KeyError(
                f"the sample has no {k!r}: pass a PointCloudMapper output (voxelized sample)"
            )
    voxels, coords, num_points = collate_voxels(
        [
            (
                torch.as_tensor(sample["voxels"]).float().cpu(),
                torch.as_tensor(sample["voxel_coords"]).cpu(),
                torch.as_tensor(sample["voxel_num_points"]).cpu(),
            )
        ]
    )
    return voxels.contiguous(), num_points.to(torch.int32), coords.to(torch.int32)


@torch.no_grad()
def eager_network_outputs(model, voxels, num_points, coords):
    """The eager model's raw head outputs for one sample, as :class:`PillarsNetwork` returns
    them (the meta-architecture's forward up to the head, with the eager pillar net)."""
    device = model.device
    voxels, num_points, coords = voxels.to(device), num_points.to(device), coords.to(device)
    features = model.pillar_encoder(voxels, num_points, coords)
    maps = model.backbone(model.scatter(features, coords, 1))
    logits, deltas, dirs = model.head([maps[f] for f in model.head_in_features])
    return [t.float().cpu() for t in (*logits, *deltas, *dirs)]


def compare_outputs(names, reference, actual):
    """Per output: ``(max |actual - reference|, that / max |reference|)``."""
    out = {}
    for name, ref, act in zip(names, reference, actual):
        ref = np.asarray(ref, dtype=np.float64)
        act = np.asarray(act, dtype=np.float64)
        if ref.shape != act.shape:
            raise ExportCheckError(f"output {name}: shape {act.shape}, eager {ref.shape}")
        if ref.size == 0:
            out[name] = (0.0, 0.0)
            continue
        diff = float(np.max(np.abs(act - ref)))
        scale = float(np.max(np.abs(ref)))
        out[name] = (diff, diff / max(scale, 1e-12))
    return out


def synthetic_check_record(root: str, *, num_sweeps: int = 10, seed: int = 0) -> dict:
    """Generate a tiny synthetic nuScenes scene (1 scene, 2 keyframes, the built-in generator's
    LiDAR) under ``root`` with its infos, and return the keyframe record that has sweeps."""
    from ..data.datasets import NUSCENES_SPEC, create_infos, load_dataset_dicts
    from ..synthetic import make_synthetic_nuscenes

    root = make_synthetic_nuscenes(
        root, num_scenes=1, keyframes_per_scene=2, seed=seed, num_workers=1
    )
    paths = create_infos(
        NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=max(int(num_sweeps), 1), progress=False
    )
    records = []
    for split, path in paths.items():
        records += load_dataset_dicts(
            path, root, dataset="nuscenes", version="v1.0-mini", split=split
        )
    if not records:
        raise RuntimeError("the synthetic generator wrote no keyframe")
    return max(records, key=lambda r: len(r.get("sweeps", ())))


def points_only(record: dict) -> dict:
    """``record`` without its annotations: the check needs the points only, and the synthetic
    frame's nuScenes labels are not classes of every config (Lyft has 9)."""
    return {k: v for k, v in record.items() if not k.startswith("gt_") and k != "num_lidar_pts"}


def synthetic_check_sample(cfg, *, seed: int = 0) -> dict:
    """A real-looking frame for the export check: a keyframe with its sweeps (as many as the
    config merges) of a tiny synthetic nuScenes scene generated in a temporary folder
    (:func:`synthetic_check_record`), run through the test-time :class:`PointCloudMapper`."""
    from ..data.mapper import PointCloudMapper

    with tempfile.TemporaryDirectory(prefix="d2_pillars_export_") as tmp:
        record = synthetic_check_record(
            os.path.join(tmp, "synthetic_nuscenes"), num_sweeps=cfg.INPUT.NUM_SWEEPS, seed=seed
        )
        return PointCloudMapper(cfg, is_train=False)(points_only(record))


def _build_eager_model(cfg):
    from ..checkpoint import PillarsCheckpointer
    from ..engine import build_pillars_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKEND = "torch"
    cfg.MODEL.DEVICE = "cpu"  # traced on the CPU: the device does not enter the graph
    model = build_pillars_model(cfg)
    model.eval()
    if cfg.MODEL.WEIGHTS:
        PillarsCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting the untrained (initial) weights")
    return model


def _metadata(cfg, model, network, example, opset):
    voxels = example[0]
    with torch.no_grad():
        features, coords = network.pillar_net(*_tracing_inputs(example, network.variant))
        canvas = network.scatter(features, coords, 1)
        maps = network.backbone(canvas)
    grid_sizes = [[int(s) for s in maps[f].shape[-2:]] for f in network.in_features]
    return {
        "metadata_version": METADATA_VERSION,
        "opset": opset,
        "pillar_net": network.variant,
        "inputs": list(network.input_names),
        "outputs": network.output_names,
        "in_features": list(network.in_features),
        "grid_sizes": grid_sizes,
        "image_size": [network.scatter.ny, network.scatter.nx],
        "head_in_channels": int(model.head.conv_cls.in_channels),
        "num_classes": int(model.head.num_classes),
        "code_size": int(model.head.code_size),
        "dir_offset": float(model.head.dir_offset),
        "max_points_per_voxel": int(voxels.shape[1]),
        "point_channels": int(voxels.shape[2]),
        "box_convention_version": BOX_CONVENTION_VERSION,
        "config": exported_config_values(cfg),
        "weights": str(cfg.MODEL.WEIGHTS),
        "torch_version": torch.__version__,
    }


@contextmanager
def _quiet_loggers(*names):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tracing_inputs(example, variant):
    """The graph inputs of ``example`` for tracing: a group (bucket) with fewer than 2 pillars is
    replaced by 2 placeholder pillars, so that no size 0 or 1 is specialised into the graph (the
    values only serve to trace; the check runs the real frame)."""
    inputs = list(graph_inputs(*example, variant))
    for k in range(0, len(inputs), 3):
        voxels, num_points, coords = inputs[k : k + 3]
        if voxels.shape[0] < 2:
            inputs[k] = voxels.new_zeros((2,) + tuple(voxels.shape[1:]))
            inputs[k + 1] = num_points.new_ones(2)
            inputs[k + 2] = coords.new_zeros(2, 4)
    return tuple(inputs)


def _torch_export(network, example, path, opset):
    require("onnxscript", "ONNX export (torch.onnx's exporter)")
    # forward(*inputs): one dynamic-shape spec per input, in order; each (voxels, num_points,
    # coords) group has its own number of pillars
    names = network.input_names
    dims = [torch.export.Dim(f"pillars_{k // 3}", min=1, max=2**24) for k in range(len(names))]
    dynamic = {"inputs": tuple({0: dims[3 * (k // 3)]} for k in range(len(names)))}
    example = _tracing_inputs(example, network.variant)
    # the exporter warns and logs about its own internals (deprecations, graph passes)
    try:
        with warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                tuple(example),
                path,
                input_names=list(network.input_names),
                output_names=network.output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
    except Exception as e:
        raise NotExportableError(
            f"torch.onnx.export failed on the network (pillar net, scatter, backbone, neck, head): "
            f"{type(e).__name__}: {e}"
        ) from e


def _write_metadata(path, metadata):
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(path)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    proto.doc_string = (
        "d2_pillars PointPillars network: pillars (voxels, num_points, coords) -> raw head "
        "outputs; decode + NMS outside (d2_pillars.deploy)"
    )
    onnx.checker.check_model(proto)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)


def _check_frames(voxels, num_points, coords):
    """The frames the check runs: the whole sample and its first half of pillars (a second V,
    so that the dynamic axis is exercised)."""
    frames = [(voxels, num_points, coords)]
    half = voxels.shape[0] // 2
    if half >= 1:
        frames.append((voxels[:half], num_points[:half], coords[:half]))
    return frames


def export_onnx(
    cfg,
    output_dir: str,
    *,
    model=None,
    sample: Optional[dict] = None,
    rtol: float = 1e-4,
    opset: int = OPSET,
    pillar_net: str = "bucketed",
) -> ExportReport:
    """
    Export the network of ``cfg`` (weights ``MODEL.WEIGHTS``, or ``model``) to
    ``output_dir/model.onnx`` and check it with onnxruntime.

    Args:
        cfg: a d2_pillars config.
        output_dir: created if needed; receives ``model.onnx``, ``config.yaml``, ``export.json``.
        model: an eager PointPillars model to export instead of building one from ``cfg``
            (left unchanged: the export works on a copy).
        sample: a test-time mapper output for the check (default: :func:`synthetic_check_sample`).
        rtol: the check fails when ``max |onnxruntime - torch| > rtol * max |torch|`` for an
            output.
        opset: ONNX opset.
        pillar_net: "bucketed" (default: pillars grouped by point count) or "dense" (one
            ``(V, M, C)`` input), see :mod:`d2_pillars.deploy.network`.

    Returns:
        ExportReport

    Raises:
        DeployDependencyError: onnx, onnxscript or onnxruntime is not installed.
        NotExportableError: the config's model has no exportable path.
        ExportCheckError: onnxruntime's outputs differ from eager PyTorch's beyond ``rtol``.
    """
    require("onnx", "ONNX export")
    require("onnxruntime", "the export's onnxruntime check")
    if cfg.MODEL.BACKEND != "torch" and model is None:
        logger.info("MODEL.BACKEND %s: exporting from the eager torch model", cfg.MODEL.BACKEND)
    if model is None:
        model = _build_eager_model(cfg)
    if model.training:
        raise ValueError("export_onnx: call model.eval() first (inference export)")
    if sample is None:
        sample = synthetic_check_sample(cfg)
    voxels, num_points, coords = model_inputs(sample)
    network = exportable_copy(model, pillar_net, max_points=voxels.shape[1])
    if voxels.shape[0] == 0:
        raise ValueError("the check sample has no pillar inside INPUT.POINT_CLOUD_RANGE")

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.onnx")
    start = time.perf_counter()
    _torch_export(network, (voxels, num_points, coords), path, opset)
    metadata = _metadata(cfg, model, network, (voxels, num_points, coords), opset)
    _write_metadata(path, metadata)
    seconds = time.perf_counter() - start

    report = check_onnx(path, model, (voxels, num_points, coords), rtol=rtol, raise_error=False)
    report.export_seconds = seconds
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        exported = cfg.clone()
        exported.defrost()
        exported.MODEL.BACKEND = "onnxruntime"
        exported.MODEL.ONNX.PATH = os.path.abspath(path)
        f.write(exported.dump())
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(dict(asdict(report), worst_rel_diff=report.worst_rel_diff), f, indent=1)
    _raise_if_failed(report)
    return report


def _raise_if_failed(report: ExportReport):
    if report.worst_rel_diff > report.rtol:
        worst = max(report.max_rel_diff, key=report.max_rel_diff.get)
        raise ExportCheckError(
            f"onnxruntime differs from eager PyTorch: output {worst} max |diff| "
            f"{report.max_abs_diff[worst]:.3g} = {report.max_rel_diff[worst]:.3g} of its largest "
            f"value, above the tolerance {report.rtol:g} ({report.path} kept for inspection)"
        )


def check_onnx(path: str, model, sample, *, rtol: float = 1e-4, raise_error: bool = True):
    """
    Run the graph at ``path`` with onnxruntime (CPU) on ``sample`` and on its first half of
    pillars (a second size of the dynamic axis) and compare every output with ``model``'s eager
    outputs (:func:`eager_network_outputs`).

    Args:
        sample: a test-time mapper output, or the ``(voxels, num_points, coords)`` of
            :func:`model_inputs`.

    Returns:
        ExportReport: the largest differences per output.

    Raises:
        ExportCheckError: (with ``raise_error``) when an output's largest difference exceeds
            ``rtol`` times its largest magnitude.
    """
    ort = require("onnxruntime", "the export's onnxruntime check")
    inputs = model_inputs(sample) if isinstance(sample, dict) else tuple(sample)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    metadata = json.loads(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
    variant = metadata.get("pillar_net", "dense")
    max_points = int(inputs[0].shape[1])
    report = ExportReport(path=path, opset=int(metadata.get("opset", -1)), num_pillars=[])
    report.rtol = rtol
    for frame in _check_frames(*inputs):
        frame_inputs = graph_inputs(*frame, variant)
        feeds = {n: t.numpy() for n, t in zip(input_names(variant, max_points), frame_inputs)}
        actual = session.run(names, feeds)
        reference = eager_network_outputs(model, *frame)
        report.num_pillars.append(int(frame[0].shape[0]))
        for name, (diff, rel) in compare_outputs(names, reference, actual).items():
            report.max_abs_diff[name] = max(report.max_abs_diff.get(name, 0.0), diff)
            report.max_rel_diff[name] = max(report.max_rel_diff.get(name, 0.0), rel)
    if raise_error:
        _raise_if_failed(report)
    return report


def format_report(report: ExportReport, names: Optional[Sequence[str]] = None) -> str:
    """A table of the check's differences, one row per output."""
    from tabulate import tabulate

    names = list(names or report.max_abs_diff)
    rows = [[n, report.max_abs_diff[n], report.max_rel_diff[n]] for n in names]
    return tabulate(
        rows, headers=["output", "max |ort - torch|", "relative"], tablefmt="pipe", floatfmt=".3g"
    )
