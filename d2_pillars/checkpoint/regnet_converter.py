# -*- coding: utf-8 -*-
"""Map ImageNet RegNet checkpoints (pycls ``.pyth``, torchvision ``regnet_*``) onto the BEV RegNet.

The BEV RegNet (``d2_pillars.modeling.backbone.regnet``) is detectron2's ``AnyNet`` without a stem,
so its parameter names are pycls names (``s1.b1.proj.weight``, ``s1.b1.f.a_bn.running_var``, ...)
under the prefix of the backbone inside the model (``backbone.bottom_up.`` under an FPN/SECFPN
wrapper). Conversion has three steps:

1. :func:`.regnet_source.read_source_state_dict`: read a file and return its state dict in pycls
   naming (torchvision names ``trunk_output.block{i}.block{i}-{j}.f.a.0.weight`` are renamed).
2. :func:`convert_to_model`: check the architecture against the model (stage depths, widths,
   group widths, SE; :mod:`.regnet_stages`), drop the ImageNet stem and classifier, and put every
   other tensor under the model's RegNet prefix. Tensors whose shape differs only because the
   model's first stage takes ``MODEL.REGNET.STEM_WIDTH`` input channels instead of the ImageNet
   stem's are left out (the model keeps its initialisation there, as mmdetection3d does).
3. :func:`save_converted_checkpoint`: write a detectron2 checkpoint that ``DetectionCheckpointer``
   loads with no unexpected keys.

:func:`format_report` renders what was mapped, dropped and left at initialisation;
:func:`convert_regnet_file` runs the three steps from file to file (``tools/convert_regnet.py``).
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple
import torch
from tabulate import tabulate

from d2_pillars.structures import BOX_CONVENTION_VERSION
from d2_pillars.utils.file_io import atomic_open

from .regnet_source import PYCLS_BLOCK_RE, RegNetCheckpointError, read_source_state_dict
from .regnet_stages import StageInfo, check_same_architecture, describe_stages, find_regnet_prefix

__all__ = [
    "DEFAULT_PREFIX",
    "CONVERTER_AUTHOR",
    "ConversionReport",
    "convert_to_model",
    "make_converted_checkpoint",
    "save_converted_checkpoint",
    "format_report",
    "build_model_state_from_config",
    "convert_regnet_file",
]

logger = logging.getLogger(__name__)

CONVERTER_AUTHOR = "d2_pillars convert_regnet"
# The first-block tensors whose input side is the stem width.
_INPUT_WIDTH_KEYS = ("s1.b1.f.a.weight", "s1.b1.proj.weight")

# Where the RegNet sits in the PointPillars meta-arch under an FPN/SECFPN wrapper (used only when
# no model is given to check against).
DEFAULT_PREFIX = "backbone.bottom_up."
_COUNTER_REASON = "BN step counter, not in SRC"


@dataclass
class ConversionReport:
    """What :func:`convert_to_model` did with each key."""

    source_format: str
    prefix: str
    source_stages: List[StageInfo]
    model_stages: List[StageInfo]
    # (source key in pycls naming, model key, shape)
    mapped: List[Tuple[str, str, Tuple[int, ...]]] = field(default_factory=list)
    # (source key in pycls naming, reason)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    # (model key, shape, reason): RegNet tensors the checkpoint does not provide
    left_at_init: List[Tuple[str, Tuple[int, ...], str]] = field(default_factory=list)
    # model tensors outside the RegNet (neck, head, pillar encoder): never in the source
    num_other_model_keys: int = 0


# ------------------------------------------------------------------------------------------------ #
# Conversion
# ------------------------------------------------------------------------------------------------ #
def convert_to_model(
    source: Mapping[str, torch.Tensor],
    model_state: Optional[Mapping[str, torch.Tensor]],
    *,
    source_format: str = "pycls",
    prefix: Optional[str] = None,
    src_name: str = "SRC",
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Map a RegNet state dict in pycls naming onto a model's parameter names and shapes.

    Args:
        source: pycls-named state dict (from :func:`.regnet_source.source_state_dict`).
        model_state: the target model's ``state_dict()`` (names and shapes are used). None:
            rename only (under ``prefix``, default :data:`DEFAULT_PREFIX`), with no architecture
            or shape check; the first block's input-side tensors are then kept and
            ``DetectionCheckpointer`` skips them with a shape warning if the stem width differs.
        source_format (str): recorded in the report.
        prefix (str or None): the RegNet's prefix in the model; None finds it.
        src_name (str): the source file, for error messages.

    Returns:
        (state dict holding only keys of ``model_state`` with equal shapes, report)

    Raises:
        RegNetCheckpointError: the architectures differ (message names each difference), or a
            source tensor has no place in the model for a reason other than the stem width.
    """
    source_stages = describe_stages(source, "")
    if model_state is None:
        return _convert_unchecked(source, source_format, prefix, source_stages)
    if prefix is None:
        try:
            prefix = find_regnet_prefix(model_state.keys())
        except RegNetCheckpointError as e:
            raise RegNetCheckpointError(
                f"Cannot load the RegNet checkpoint {src_name}: {e}"
            ) from None
    model_stages = describe_stages(model_state, prefix)
    check_same_architecture(model_stages, source_stages, src_name)
    report = ConversionReport(source_format, prefix, source_stages, model_stages)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    stem_in = model_stages[0].in_width
    src_in = source_stages[0].in_width
    width_reason = (
        f"input width: s1 takes {stem_in} channels in the model (MODEL.REGNET.STEM_WIDTH) but "
        f"{src_in} in SRC (ImageNet stem output)"
    )
    errors = []
    for key, value in source.items():
        if key.startswith("stem."):
            report.dropped.append((key, "ImageNet stem (the BEV RegNet has none)"))
            continue
        if key.startswith("head."):
            report.dropped.append((key, "ImageNet classifier"))
            continue
        target = prefix + key
        if target not in model_state:
            m = PYCLS_BLOCK_RE.match(key)
            if key.endswith("num_batches_tracked"):
                report.dropped.append((key, "the model's norm has no step counter (FrozenBN)"))
            elif m and m.group(2) == "1" and m.group(3).split(".")[0] in ("proj", "bn"):
                report.dropped.append(
                    (key, "the model's block has no shortcut projection (same width, stride 1)")
                )
            else:
                errors.append(f"{key} -> {target} (not in the model)")
            continue
        model_shape = tuple(model_state[target].shape)
        if tuple(value.shape) != model_shape:
            if (
                key in _INPUT_WIDTH_KEYS
                and stem_in != src_in
                and model_shape[:1] + model_shape[2:] == tuple(value.shape[:1] + value.shape[2:])
            ):
                report.dropped.append((key, width_reason))
            else:
                errors.append(
                    f"{key}: shape {tuple(value.shape)} in SRC but {model_shape} in the model"
                )
            continue
        out[target] = value.detach().clone()
        report.mapped.append((key, target, model_shape))
    if errors:
        raise RegNetCheckpointError(
            f"{src_name}: {len(errors)} tensors do not fit the model:\n  - "
            + "\n  - ".join(errors[:20])
        )
    dropped_input = {prefix + k for k, r in report.dropped if r == width_reason}
    for key, value in model_state.items():
        if key in out:
            continue
        if not key.startswith(prefix) or not PYCLS_BLOCK_RE.match(key[len(prefix) :]):
            report.num_other_model_keys += 1
            continue
        if key in dropped_input:
            reason = width_reason
        elif key.endswith("num_batches_tracked"):
            reason = _COUNTER_REASON
        else:
            reason = "not in SRC"
        report.left_at_init.append((key, tuple(value.shape), reason))
    return out, report


def _convert_unchecked(source, source_format, prefix, source_stages):
    """Rename without a model: no architecture or shape check (see :func:`convert_to_model`)."""
    prefix = DEFAULT_PREFIX if prefix is None else prefix
    report = ConversionReport(source_format, prefix, source_stages, source_stages)
    out = OrderedDict()
    for key, value in source.items():
        if key.startswith("stem."):
            report.dropped.append((key, "ImageNet stem (the BEV RegNet has none)"))
        elif key.startswith("head."):
            report.dropped.append((key, "ImageNet classifier"))
        else:
            out[prefix + key] = value.detach().clone()
            report.mapped.append((key, prefix + key, tuple(value.shape)))
    return out, report


def make_converted_checkpoint(state: Mapping[str, torch.Tensor], report: ConversionReport) -> dict:
    """The detectron2 checkpoint dict for a converted state dict (plain types only)."""
    return {
        "model": OrderedDict(state),
        "__author__": CONVERTER_AUTHOR,
        "matching_heuristics": False,
        "box_convention_version": BOX_CONVENTION_VERSION,
        "source_format": report.source_format,
    }


def _check_output_name(path: str) -> str:
    path = os.fspath(path)
    if path.endswith((".pkl", ".pyth")):
        raise ValueError(
            f"Output {path}: detectron2 reads .pkl and .pyth files as Detectron/pycls formats; "
            "name the converted checkpoint *.pth."
        )
    return path


def save_converted_checkpoint(path: str, state, report: ConversionReport) -> None:
    """Write a converted checkpoint atomically (``.pth``; ``DetectionCheckpointer`` treats
    ``.pkl`` and ``.pyth`` as other formats, so those names are refused)."""
    path = _check_output_name(path)
    with atomic_open(path, "wb") as f:
        torch.save(make_converted_checkpoint(state, report), f)


# ------------------------------------------------------------------------------------------------ #
# Report
# ------------------------------------------------------------------------------------------------ #
def format_report(report: ConversionReport, verbose: bool = False) -> str:
    """Tables of the conversion: per stage, dropped keys by reason, keys left at initialisation.

    With ``verbose`` every mapped key is listed as well.
    """
    lines = [
        f"RegNet conversion from {report.source_format} into prefix '{report.prefix}': "
        f"{len(report.mapped)} tensors mapped, {len(report.dropped)} dropped, "
        f"{len(report.left_at_init)} RegNet tensors left at initialisation, "
        f"{report.num_other_model_keys} model tensors outside the RegNet (neck, head, ...) "
        "not touched."
    ]
    per_stage: Dict[str, int] = {}
    for src, _, _ in report.mapped:
        per_stage[src.split(".")[0]] = per_stage.get(src.split(".")[0], 0) + 1
    rows = [
        (s.name, s.depth, s.in_width, s.width, s.group_width, s.groups, per_stage.get(s.name, 0))
        for s in report.model_stages
    ]
    lines.append(
        tabulate(
            rows,
            headers=["stage", "blocks", "in width", "width", "group width", "groups", "mapped"],
            tablefmt="pipe",
        )
    )
    by_reason: Dict[str, List[str]] = {}
    for key, reason in report.dropped:
        by_reason.setdefault(reason, []).append(key)
    if by_reason:
        rows = [
            (len(keys), reason, ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else ""))
            for reason, keys in by_reason.items()
        ]
        lines.append("Dropped from the source:")
        lines.append(tabulate(rows, headers=["count", "reason", "keys"], tablefmt="pipe"))
    if report.left_at_init:
        rows = [
            (k, "x".join(map(str, s)), r) for k, s, r in report.left_at_init if r != _COUNTER_REASON
        ]
        counters = len(report.left_at_init) - len(rows)
        if counters:
            rows.append((f"({counters} x *.num_batches_tracked)", "", _COUNTER_REASON))
        lines.append("RegNet tensors left at initialisation:")
        lines.append(tabulate(rows, headers=["model key", "shape", "reason"], tablefmt="pipe"))
    if verbose:
        lines.append("Mapped:")
        lines.append(
            tabulate(
                [(s, d, "x".join(map(str, sh))) for s, d, sh in report.mapped],
                headers=["source key (pycls naming)", "model key", "shape"],
                tablefmt="pipe",
            )
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ #
# File to file (tools/convert_regnet.py)
# ------------------------------------------------------------------------------------------------ #
def build_model_state_from_config(config_file: str, opts=()) -> "OrderedDict[str, torch.Tensor]":
    """Build the config's model on the CPU and return its ``state_dict()`` (target names and
    shapes for :func:`convert_to_model`)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from d2_pillars.config import add_pillars_config

    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return build_model(cfg).state_dict()


def convert_regnet_file(
    src: str,
    dst: str,
    *,
    fmt: str = "auto",
    config_file: Optional[str] = None,
    opts=(),
    prefix: Optional[str] = None,
) -> ConversionReport:
    """Convert ``src`` (pycls ``.pyth`` / torchvision RegNet) into a detectron2 checkpoint ``dst``.

    Args:
        src, dst (str): input file; output ``.pth`` (written atomically).
        fmt (str): "auto", "pycls" or "torchvision".
        config_file (str or None): a d2_pillars config; its model gives the target names, the
            RegNet prefix and the shapes to check. None: rename under ``prefix`` unchecked.
        opts (list[str]): config overrides (``KEY VALUE`` pairs) after ``config_file``.
        prefix (str or None): the RegNet's prefix in the model; None derives it from the model
            (or uses :data:`DEFAULT_PREFIX` without a config).

    Returns:
        ConversionReport
    """
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"Output {dst} would overwrite the input; choose another name.")
    _check_output_name(dst)  # fail before the slow part
    source, fmt = read_source_state_dict(src, fmt)
    model_state = build_model_state_from_config(config_file, opts) if config_file else None
    state, report = convert_to_model(
        source, model_state, source_format=fmt, prefix=prefix, src_name=os.fspath(src)
    )
    save_converted_checkpoint(dst, state, report)
    return report
