"""Checkpoints: ``PillarsCheckpointer`` (box-convention check, atomic saves, RegNet conversion on
load) and the pycls / torchvision RegNet converter behind ``tools/convert_regnet.py``: reading the
source files (:mod:`.regnet_source`), their stages (:mod:`.regnet_stages`), the conversion onto the
model (:mod:`.regnet_converter`)."""

from .checkpointer import BOX_CONVENTION_KEY, BoxConventionMismatchError, PillarsCheckpointer
from .regnet_converter import ConversionReport, convert_regnet_file, convert_to_model, format_report
from .regnet_source import RegNetCheckpointError, read_source_state_dict

__all__ = [
    "BOX_CONVENTION_KEY",
    "BoxConventionMismatchError",
    "ConversionReport",
    "PillarsCheckpointer",
    "RegNetCheckpointError",
    "convert_regnet_file",
    "convert_to_model",
    "format_report",
    "read_source_state_dict",
]
