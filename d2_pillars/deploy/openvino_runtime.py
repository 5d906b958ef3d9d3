"""OpenVINO inference of the exported graph (``MODEL.BACKEND "openvino"``).

:class:`OpenVinoPointPillars` is :class:`~d2_pillars.deploy.runtime.OnnxPointPillars` with the
graph compiled by OpenVINO's CPU plugin instead of an onnxruntime session: the same metadata and
config check, the same batching of the pillars (bucketed inputs), the same decode + NMS. OpenVINO
reads the ONNX file itself, the float graph and the int8 QDQ graph of
:func:`d2_pillars.deploy.export_int8` alike; on the int8 graph it fuses each
QuantizeLinear / DequantizeLinear pair around a convolution into an int8 kernel (VNNI / AMX),
which is why it runs that graph faster than onnxruntime does (docs/performance.md).

``MODEL.OPENVINO.INFERENCE_PRECISION`` picks the precision of the operations left in float:
"f32" (default) or "bf16" (on CPUs with AVX512-BF16 or AMX). Threads:
``MODEL.ONNX.INTRA_OP_THREADS`` (0: OpenVINO's default, one per core).
"""

import logging
from typing import List, Optional, Sequence
import torch

from ._deps import require
from .runtime import OnnxPointPillars, register_graph_backend

__all__ = ["OpenVinoPointPillars", "INFERENCE_PRECISIONS"]

logger = logging.getLogger(__name__)

#: Accepted values of MODEL.OPENVINO.INFERENCE_PRECISION.
INFERENCE_PRECISIONS = ("f32", "bf16")


class OpenVinoPointPillars(OnnxPointPillars):
    """
    PointPillars inference with the network compiled by OpenVINO (``MODEL.BACKEND "openvino"``).

    Args:
        cfg: the config the graph was exported with (see :class:`OnnxPointPillars`).
        path: the graph (default ``MODEL.ONNX.PATH``).
        providers: unused (onnxruntime's execution providers); the device is
            ``MODEL.OPENVINO.DEVICE``.
        intra_op_threads: inference threads (default ``MODEL.ONNX.INTRA_OP_THREADS``; 0:
            OpenVINO's default).
        precision: "f32" or "bf16" (default ``MODEL.OPENVINO.INFERENCE_PRECISION``).
    """

    backend_name = "openvino"

    def __init__(self, cfg, *, precision: Optional[str] = None, **kwargs):
        self._precision = precision
        super().__init__(cfg, **kwargs)

    def _open(self, cfg, threads: int, providers: Optional[Sequence[str]]):
        ov = require("openvino", "MODEL.BACKEND openvino")
        precision = self._precision or cfg.MODEL.OPENVINO.INFERENCE_PRECISION
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"MODEL.OPENVINO.INFERENCE_PRECISION must be one of {INFERENCE_PRECISIONS}, got "
                f"{precision!r}"
            )
        device = cfg.MODEL.OPENVINO.DEVICE
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(self.path), device, config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.providers = [f"OpenVINO {ov.__version__} {device} ({precision})"]
        # output ports in the metadata's order (the graph's output names)
        ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        missing = [n for n in self.metadata["outputs"] if n not in ports]
        if missing:
            raise ValueError(f"{self.path}: OpenVINO finds no output {missing}")
        self._ports = [ports[n] for n in self.metadata["outputs"]]

    def run_graph(self, feeds, copy: bool = True) -> List[torch.Tensor]:
        """One inference; the outputs as CPU tensors, in :attr:`output_names` order: copies, or
        with ``copy=False`` views of the request's output buffers, which the next call
        overwrites (no 35 MB copy per 10-sweep nuScenes frame)."""
        results = self.request.infer(feeds, share_inputs=True, share_outputs=not copy)
        return [torch.from_numpy(results[p]) for p in self._ports]

    def extra_repr(self):
        return f"path={self.path}, openvino={self.providers[0]}"


register_graph_backend("openvino", OpenVinoPointPillars)
