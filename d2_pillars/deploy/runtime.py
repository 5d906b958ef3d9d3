"""onnxruntime inference: the exported graph with the eager path's pre- and post-processing.

:class:`OnnxPointPillars` has the inference interface of the PointPillars meta-architecture
(``model(list of mapper dicts) -> [{"instances": Instances}]``), so detectron2's
``inference_on_dataset`` (``tools/train_net.py --eval-only``), :class:`PillarsPredictor`-style
callers and the visualizer use it unchanged. It is registered as ``MODEL.BACKEND "onnxruntime"``
(``build_pillars_model`` returns it). Per sample it batches the mapper's pillars with the same
``collate_voxels`` as the eager model, runs the graph, and decodes with the same
:meth:`Anchor3DHead.inference` (per-class rotated NMS, direction fix).

Execution providers: ``MODEL.ONNX.PROVIDERS``, or by default TensorRT and CUDA when the installed
onnxruntime has them (the ``onnxruntime-gpu`` wheel), then CPU. TensorRT gets an optimisation
profile for 1 .. ``INPUT.MAX_VOXELS_TEST`` pillars and an engine cache next to the graph.
"""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence
import torch
from torch import nn

from detectron2.layers import ShapeSpec

from ..data.mapper import PointCloudMapper
from ..engine.device import inference_device_config
from ..engine.predictor import PillarsPredictor
from ..engine.trainer import INFERENCE_BACKEND_REGISTRY
from ..modeling.anchor_head import build_anchor3d_head
from ._deps import require
from .export import METADATA_KEY, exported_config_values, model_inputs
from .network import bucket_sizes, graph_inputs, split_outputs

__all__ = [
    "OnnxPointPillars",
    "OnnxPillarsPredictor",
    "build_predictor",
    "resolve_onnx_path",
    "select_providers",
    "PREFERRED_PROVIDERS",
    "GRAPH_BACKENDS",
    "register_graph_backend",
]

logger = logging.getLogger(__name__)

#: Tried in this order when MODEL.ONNX.PROVIDERS is empty (those the installed onnxruntime has).
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def resolve_onnx_path(path: str) -> str:
    """``path`` itself, or ``path/model.onnx`` for a folder written by the exporter."""
    if not path:
        raise ValueError(
            "MODEL.BACKEND onnxruntime needs MODEL.ONNX.PATH: the model.onnx (or its folder) "
            "written by tools/deploy/export_model.py"
        )
    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.ONNX.PATH {path}: no such file; export the model first with "
            "tools/deploy/export_model.py --config-file CFG --output DIR"
        )
    return path


def select_providers(requested: Sequence[str], available: Sequence[str]) -> List[str]:
    """The execution providers to use: ``requested`` (each must be available), else the
    :data:`PREFERRED_PROVIDERS` that are available."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(
                f"MODEL.ONNX.PROVIDERS {list(requested)}: {missing} not available in this "
                f"onnxruntime (available: {list(available)})"
            )
        return list(requested)
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    return chosen or list(available)


def _provider_options(providers, metadata, cfg, cache_dir):
    """Per provider options: TensorRT gets the dynamic-pillar profile and an engine cache."""
    options = []
    m, c = metadata["max_points_per_voxel"], metadata["point_channels"]
    v_max = max(int(cfg.INPUT.MAX_VOXELS_TEST), 1)

    def shapes(v):
        if metadata.get("pillar_net") == "bucketed":
            return ",".join(
                f"voxels_{b}:{v}x{b}x{c},num_points_{b}:{v},coords_{b}:{v}x4"
                for b in bucket_sizes(m)
            )
        return f"voxels:{v}x{m}x{c},num_points:{v},coords:{v}x4"

    for p in providers:
        if p == "TensorrtExecutionProvider":
            options.append(
                {
                    "trt_profile_min_shapes": shapes(1),
                    "trt_profile_opt_shapes": shapes(v_max),
                    "trt_profile_max_shapes": shapes(v_max),
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": cache_dir,
                }
            )
        else:
            options.append({})
    return options


class _PostProcessing:
    """The head's decode + NMS (:meth:`Anchor3DHead.inference`) for the graph's outputs.

    The head is built from the config (its anchors, box coder, NMS settings); its convolutions
    are not used (they are inside the graph), so it is kept out of the module tree: the
    onnxruntime model has no parameters to load or save.
    """

    def __init__(self, cfg, metadata):
        num_levels = len(metadata["in_features"])
        shape = ShapeSpec(channels=metadata["head_in_channels"])
        self.head = build_anchor3d_head(cfg, [shape] * num_levels).eval()
        self.head.dir_offset = float(metadata["dir_offset"])  # the exported weights' offset
        self.grid_sizes = [tuple(g) for g in metadata["grid_sizes"]]
        self.image_size = tuple(metadata["image_size"])
        self.num_levels = num_levels

    def __call__(self, outputs):
        logits, deltas, dirs = split_outputs(outputs, self.num_levels)
        return self.head.inference(self.grid_sizes, logits, deltas, dirs, self.image_size)


class OnnxPointPillars(nn.Module):
    """
    PointPillars inference with the network in onnxruntime (``MODEL.BACKEND "onnxruntime"``).

    Args:
        cfg: the config the graph was exported with (its pre- and post-processing keys are
            used; the keys the graph depends on must equal the export's).
        path: the graph (default ``MODEL.ONNX.PATH``).
        providers: execution providers (default ``MODEL.ONNX.PROVIDERS``, see the module doc).
        intra_op_threads: session threads (default ``MODEL.ONNX.INTRA_OP_THREADS``; 0:
            onnxruntime's default).
    """

    #: the MODEL.BACKEND this class implements
    backend_name = "onnxruntime"

    def __init__(
        self,
        cfg,
        *,
        path: Optional[str] = None,
        providers: Optional[Sequence[str]] = None,
        intra_op_threads: Optional[int] = None,
    ):
        super().__init__()
        ort = require("onnxruntime", "MODEL.BACKEND onnxruntime")
        self.path = resolve_onnx_path(path or cfg.MODEL.ONNX.PATH)
        if cfg.MODEL.WEIGHTS:
            logger.warning(
                "MODEL.WEIGHTS %s is not read by MODEL.BACKEND %s: the weights are those "
                "exported into %s",
                cfg.MODEL.WEIGHTS,
                self.backend_name,
                self.path,
            )
        threads = cfg.MODEL.ONNX.INTRA_OP_THREADS if intra_op_threads is None else intra_op_threads
        # the metadata first (a session without TensorRT reads it cheaply)
        self.metadata = self._read_metadata(ort)
        self._check_config(cfg)
        self._open(cfg, int(threads), providers)
        self.output_names = list(self.metadata["outputs"])
        self.input_names = list(self.metadata["inputs"])
        self.pillar_net = self.metadata.get("pillar_net", "dense")
        self.postprocess = _PostProcessing(cfg, self.metadata)
        self._device = torch.device(inference_device_config(cfg).MODEL.DEVICE)
        self.train(False)

    def _open(self, cfg, threads: int, providers: Optional[Sequence[str]]):
        """Create the onnxruntime session (sets :attr:`session`, :attr:`providers`)."""
        ort = require("onnxruntime", "MODEL.BACKEND onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session_options = options
        requested = list(cfg.MODEL.ONNX.PROVIDERS) if providers is None else list(providers)
        self.providers = select_providers(requested, ort.get_available_providers())
        cache = os.path.join(os.path.dirname(os.path.abspath(self.path)), "trt_cache")
        self.session = ort.InferenceSession(
            self.path,
            options,
            providers=self.providers,
            provider_options=_provider_options(self.providers, self.metadata, cfg, cache),
        )

    def _read_metadata(self, ort) -> Dict:
        options = ort.SessionOptions()  # no graph optimisation: only the metadata is read
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(
                f"{self.path} has no '{METADATA_KEY}' metadata: it was not written by "
                "tools/deploy/export_model.py"
            )
        return json.loads(props[METADATA_KEY])

    def _check_config(self, cfg):
        from ..structures import BOX_CONVENTION_VERSION

        exported = self.metadata["config"]
        current = exported_config_values(cfg)
        diffs = [
            f"{k}: graph {exported[k]}, config {current.get(k)}"
            for k in exported
            if exported[k] != current.get(k)
        ]
        if diffs:
            raise ValueError(
                f"{self.path} was exported with other values of keys it depends on ("
                + "; ".join(diffs)
                + "): use the config.yaml written next to it, or export again"
            )
        if self.metadata.get("box_convention_version") != BOX_CONVENTION_VERSION:
            raise ValueError(
                f"{self.path} was exported with box convention version "
                f"{self.metadata.get('box_convention_version')}, this code has "
                f"{BOX_CONVENTION_VERSION}: export it again"
            )

    @property
    def device(self) -> torch.device:
        return self._device

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                f"MODEL.BACKEND {self.backend_name} is inference only: train with MODEL.BACKEND "
                "torch"
            )
        return super().train(False)

    def graph_feeds(self, voxels, num_points, coords) -> Dict:
        """The graph's numpy inputs for one sample's ``(voxels, num_points, coords)`` (see
        :func:`model_inputs`); for the bucketed layout, the pillars are grouped here."""
        voxels = voxels.detach().cpu().float()
        num_points = num_points.detach().cpu().to(torch.int32)
        coords = coords.detach().cpu().to(torch.int32)
        inputs = graph_inputs(voxels, num_points, coords, self.pillar_net)
        return {n: t.contiguous().numpy() for n, t in zip(self.input_names, inputs)}

    def run_graph(self, feeds, copy: bool = True) -> List[torch.Tensor]:
        """``session.run``; the outputs as CPU tensors, in :attr:`output_names` order.

        ``copy=False`` allows a back-end to return views of its own output buffers, valid until
        the next call (:meth:`forward` decodes them at once); onnxruntime's are fresh arrays
        either way."""
        return [torch.from_numpy(o) for o in self.session.run(self.output_names, feeds)]

    def run_network(self, voxels, num_points, coords) -> List[torch.Tensor]:
        """The graph on one sample's ``(voxels, num_points, coords)``."""
        return self.run_graph(self.graph_feeds(voxels, num_points, coords))

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs (list[dict]): test-time mapper outputs (``voxels``, ``voxel_coords``,
                ``voxel_num_points``); each sample runs through the graph on its own.

        Returns:
            list[dict]: ``{"instances": Instances}`` per sample, as the eager model.
        """
        results = []
        for i, x in enumerate(batched_inputs):
            if "voxels" not in x:
                raise KeyError(
                    f"batched_inputs[{i}] has no 'voxels': the onnxruntime model takes voxelized "
                    "samples; build the data loader with d2_pillars' PointCloudMapper"
                )
            # decoded before the next call: the outputs may be the runtime's own buffers
            outputs = self.run_graph(self.graph_feeds(*model_inputs(x)), copy=False)
            outputs = [o.to(self._device) for o in outputs]
            (instances,) = self.postprocess(outputs)
            results.append({"instances": instances})
        return results

    def extra_repr(self):
        return f"path={self.path}, providers={self.providers}"


#: MODEL.BACKEND -> the class that runs the exported graph (:func:`register_graph_backend`;
#: d2_pillars.deploy.openvino_runtime adds "openvino")
GRAPH_BACKENDS = {}


def register_graph_backend(name: str, cls):
    """Make ``MODEL.BACKEND name`` build ``cls(cfg)`` (an :class:`OnnxPointPillars` subclass)
    in :func:`~d2_pillars.engine.build_pillars_model` and :func:`build_predictor`."""

    def build(cfg):
        return cls(cfg)

    build.__name__ = name  # the registry key
    if name not in INFERENCE_BACKEND_REGISTRY:
        INFERENCE_BACKEND_REGISTRY.register(build)
    GRAPH_BACKENDS[name] = cls


register_graph_backend("onnxruntime", OnnxPointPillars)


class OnnxPillarsPredictor(PillarsPredictor):
    """:class:`PillarsPredictor` with the network in the exported graph (``MODEL.BACKEND``
    onnxruntime, or openvino: :data:`GRAPH_BACKENDS`): the same test-time mapper
    (``__call__(dataset_dict)``, ``predict_points(points)``), the same decode + NMS, the same
    ``{"instances": Instances}`` on the CPU. Keyword arguments go to the back-end's class
    (:class:`OnnxPointPillars`)."""

    def __init__(self, cfg, **session_kwargs):
        self.cfg = inference_device_config(cfg.clone())
        backend = cfg.MODEL.BACKEND if cfg.MODEL.BACKEND in GRAPH_BACKENDS else "onnxruntime"
        self.model = GRAPH_BACKENDS[backend](self.cfg, **session_kwargs)
        self.mapper = PointCloudMapper(self.cfg, is_train=False)


def build_predictor(cfg):
    """:class:`PillarsPredictor` or :class:`OnnxPillarsPredictor`, by ``MODEL.BACKEND``."""
    if cfg.MODEL.BACKEND in GRAPH_BACKENDS:
        return OnnxPillarsPredictor(cfg)
    if cfg.MODEL.BACKEND != "torch":
        known = ", ".join(repr(k) for k in ("torch", *GRAPH_BACKENDS))
        raise ValueError(f"MODEL.BACKEND must be one of {known}, got {cfg.MODEL.BACKEND!r}")
    return PillarsPredictor(cfg)
