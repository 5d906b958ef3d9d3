"""Deployment: ONNX export of the PointPillars network (float, or calibrated int8), onnxruntime
and OpenVINO inference.

Importing this package registers ``MODEL.BACKEND "onnxruntime"`` and ``"openvino"`` for
``build_pillars_model``. onnx, onnxscript, onnxruntime and openvino are imported on first use
(``requirements-deploy.txt``).
See the README's "Deploy" section.
"""

from ._deps import DeployDependencyError
from .export import (
    OPSET,
    ExportCheckError,
    ExportReport,
    export_onnx,
    format_report,
    model_inputs,
    synthetic_check_sample,
)
from .matching import DetectionMatchReport, MatchTolerance, match_detections
from .network import NotExportableError, PillarsNetwork, exportable_copy
from .openvino_runtime import OpenVinoPointPillars
from .quantize import QuantizationCheckError, QuantizationReport, export_int8
from .runtime import OnnxPillarsPredictor, OnnxPointPillars, build_predictor, select_providers

__all__ = [
    "DeployDependencyError",
    "OPSET",
    "ExportCheckError",
    "ExportReport",
    "export_onnx",
    "format_report",
    "model_inputs",
    "synthetic_check_sample",
    "NotExportableError",
    "PillarsNetwork",
    "exportable_copy",
    "OnnxPillarsPredictor",
    "OnnxPointPillars",
    "build_predictor",
    "select_providers",
    "OpenVinoPointPillars",
    "DetectionMatchReport",
    "MatchTolerance",
    "match_detections",
    "QuantizationCheckError",
    "QuantizationReport",
    "export_int8",
]
