# -*- coding: utf-8 -*-
"""Map ImageNet RegNet checkpoints (pycls ``.pyth``, torchvision ``regnet_*``) onto the BEV RegNet.

The BEV RegNet (``d2_pillars.modeling.backbone.regnet``) is detectron2's ``AnyNet`` without a stem,
so its parameter names are pycls names (``s1.b1.proj.weight``, ``s1.b1.f.a_bn.running_var``, ...)
under the prefix of the backbone inside the model (``backbone.bottom_up.`` under an FPN/SECFPN
wrapper). Conversion has three steps:

1. :func:`read_source_state_dict`: read a file and return its state dict in pycls naming
   (torchvision names ``trunk_output.block{i}.block{i}-{j}.f.a.0.weight`` are renamed).
2. :func:`convert_to_model`: check the architecture against the model (stage depths, widths,
   group widths, SE), drop the ImageNet stem and classifier, and put every other tensor under the
   model's RegNet prefix. Tensors whose shape differs only because the model's first stage takes
   ``MODEL.REGNET.STEM_WIDTH`` input channels instead of the ImageNet stem's are left out (the
   model keeps its initialisation there, as mmdetection3d does).
3. :func:`save_converted_checkpoint`: write a detectron2 checkpoint that ``DetectionCheckpointer``
   loads with no unexpected keys.

:func:`format_report` renders what was mapped, dropped and left at initialisation.
"""
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple
import torch
from tabulate import tabulate

from d2_pillars.structures import BOX_CONVENTION_VERSION
from d2_pillars.utils.file_io import atomic_open

__all__ = [
    "SOURCE_FORMATS",
    "DEFAULT_PREFIX",
    "CONVERTER_AUTHOR",
    "RegNetCheckpointError",
    "StageInfo",
    "ConversionReport",
    "load_weights_file",
    "detect_source_format",
    "source_state_dict",
    "read_source_state_dict",
    "torchvision_to_pycls_names",
    "describe_stages",
    "find_regnet_prefix",
    "convert_to_model",
    "make_converted_checkpoint",
    "save_converted_checkpoint",
    "format_report",
    "build_model_state_from_config",
    "convert_regnet_file",
]

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("pycls", "torchvision")
CONVERTER_AUTHOR = "d2_pillars convert_regnet"
# A parameter that exists in every RegNet block layout; its name locates the RegNet in a model.
_ANCHOR_KEY = "s1.b1.f.a.weight"
# The first-block tensors whose input side is the stem width.
_INPUT_WIDTH_KEYS = ("s1.b1.f.a.weight", "s1.b1.proj.weight")

# Where the RegNet sits in the PointPillars meta-arch under an FPN/SECFPN wrapper (used only when
# no model is given to check against).
DEFAULT_PREFIX = "backbone.bottom_up."
_COUNTER_REASON = "BN step counter, not in SRC"
_BLOCK_RE = re.compile(r"^s(\d+)\.b(\d+)\.(.+)$")
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PYCLS_BLOCK_PARAM_RE = re.compile(
    r"^(proj|bn|f\.[abc]|f\.[abc]_bn|f\.se\.f_ex\.[02])\." + _PARAM + "$"
)
_PYCLS_OTHER_RE = re.compile(r"^(stem\.conv|stem\.bn|head\.fc)\." + _PARAM + "$")
_TV_BLOCK_RE = re.compile(r"^trunk_output\.block(\d+)\.block(\d+)-(\d+)\.(.+)$")
_TV_SUFFIX = [
    (re.compile(r"^proj\.0\.(.+)$"), r"proj.\1"),
    (re.compile(r"^proj\.1\.(.+)$"), r"bn.\1"),
    (re.compile(r"^f\.([abc])\.0\.(.+)$"), r"f.\1.\2"),
    (re.compile(r"^f\.([abc])\.1\.(.+)$"), r"f.\1_bn.\2"),
    (re.compile(r"^f\.se\.fc1\.(.+)$"), r"f.se.f_ex.0.\1"),
    (re.compile(r"^f\.se\.fc2\.(.+)$"), r"f.se.f_ex.2.\1"),
]
_TV_OTHER = [
    (re.compile(r"^stem\.0\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^stem\.1\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^fc\.(.+)$"), r"head.fc.\1"),
]


class RegNetCheckpointError(ValueError):
    """A RegNet checkpoint that cannot be read, or that does not fit the model."""


@dataclass
class StageInfo:
    """Shape summary of one RegNet stage, read from parameter shapes."""

    name: str  # "s1".."sN"
    depth: int  # number of blocks
    width: int  # output channels
    in_width: int  # input channels of the first block
    bottleneck_width: int  # channels of the grouped 3x3 conv
    group_width: int  # channels per group of the 3x3 conv
    se: bool  # blocks have squeeze-and-excitation

    @property
    def groups(self) -> int:
        return self.bottleneck_width // self.group_width


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
# Reading
# ------------------------------------------------------------------------------------------------ #
def load_weights_file(path: str):
    """``torch.load`` a checkpoint with ``weights_only=True`` on the CPU, with a clear error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (not a torch file), ...
        raise RegNetCheckpointError(
            f"Cannot read {path} with torch.load(weights_only=True): {e}\n"
            "Checkpoints must hold only tensors and plain Python types. If you trust the file, "
            "re-save just its weights, e.g. for a pycls file: "
            "torch.save(torch.load(SRC, weights_only=False)['model_state'], DST)."
        ) from e


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix of a DataParallel/DistributedDataParallel state dict."""
    if state and all(k.startswith("module.") for k in state):
        return OrderedDict((k[len("module.") :], v) for k, v in state.items())
    return OrderedDict(state)


def _looks_like(state: Mapping, fmt: str) -> bool:
    if not isinstance(state, Mapping) or not state:
        return False
    keys = [k for k in state if isinstance(k, str)]
    if fmt == "pycls":
        return any(_BLOCK_RE.match(k) for k in keys) and not any(
            k.startswith("trunk_output.") for k in keys
        )
    return any(k.startswith("trunk_output.block") for k in keys)


def detect_source_format(obj) -> Optional[str]:
    """Return ``"pycls"`` or ``"torchvision"`` if ``obj`` (a loaded file) is a RegNet of that
    format, else None (e.g. a detectron2 checkpoint of a whole model).

    pycls files are ``{"model_state": state_dict, ...}`` with names ``s{i}.b{j}.*`` at the root;
    torchvision files are plain state dicts with names ``trunk_output.block{i}.block{i}-{j}.*``.
    """
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("model_state"), Mapping):
        return "pycls"
    state = _strip_module_prefix(obj) if all(isinstance(k, str) for k in obj) else obj
    if _looks_like(state, "torchvision"):
        return "torchvision"
    if _looks_like(state, "pycls") and all(isinstance(v, torch.Tensor) for v in state.values()):
        return "pycls"
    return None


def source_state_dict(obj, fmt: str = "auto", path: str = "SRC") -> Tuple[Dict, str]:
    """Return ``(state_dict in pycls naming, format)`` of a loaded pycls/torchvision file.

    Args:
        obj: what :func:`load_weights_file` returned.
        fmt (str): "pycls", "torchvision" or "auto".
        path (str): the file name, for error messages.
    """
    if fmt not in ("auto",) + SOURCE_FORMATS:
        raise ValueError(f"Unknown source format {fmt!r}; use one of auto, pycls, torchvision.")
    detected = detect_source_format(obj)
    if fmt == "auto":
        if detected is None:
            raise RegNetCheckpointError(
                f"{path} is neither a pycls RegNet checkpoint ({{'model_state': ...}} with "
                "keys 's1.b1.*') nor a torchvision RegNet state dict (keys 'trunk_output.*')."
            )
        fmt = detected
    elif detected != fmt:
        raise RegNetCheckpointError(
            f"{path} was given as format {fmt!r} but its keys look like "
            f"{detected or 'neither pycls nor torchvision'}; pass --format {detected or 'auto'}."
        )
    state = obj["model_state"] if (fmt == "pycls" and "model_state" in obj) else obj
    state = _strip_module_prefix(state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise RegNetCheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    if fmt == "torchvision":
        state = torchvision_to_pycls_names(state, path=path)
    else:
        _check_pycls_names(state, path)
    return state, fmt


def read_source_state_dict(path: str, fmt: str = "auto") -> Tuple[Dict, str]:
    """Read a pycls ``.pyth`` or a torchvision RegNet file: ``(state in pycls naming, format)``."""
    return source_state_dict(load_weights_file(path), fmt, path=os.fspath(path))


def _check_pycls_names(state: Mapping[str, torch.Tensor], path: str):
    unknown = []
    for k in state:
        m = _BLOCK_RE.match(k)
        ok = _PYCLS_BLOCK_PARAM_RE.match(m.group(3)) if m else _PYCLS_OTHER_RE.match(k)
        if not ok:
            unknown.append(k)
    if unknown:
        raise RegNetCheckpointError(
            f"{path} has keys that are not RegNet (AnyNet bottleneck block) parameters, e.g. "
            f"{unknown[:5]}; only RegNetX/RegNetY checkpoints can be converted."
        )


def torchvision_to_pycls_names(
    state: Mapping[str, torch.Tensor], path: str = "SRC"
) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ``regnet_x_*``/``regnet_y_*`` state dict to pycls names.

    ``stem.0/1`` -> ``stem.conv/bn``; ``trunk_output.block{i}.block{i}-{j}.proj.0/1`` ->
    ``s{i}.b{j+1}.proj/bn``; ``.f.{a,b,c}.0/1`` -> ``.f.{a,b,c}/{a,b,c}_bn``;
    ``.f.se.fc1/fc2`` -> ``.f.se.f_ex.0/2``; ``fc`` -> ``head.fc``.
    """
    out = OrderedDict()
    unknown = []
    for key, value in state.items():
        new = None
        m = _TV_BLOCK_RE.match(key)
        if m and m.group(1) == m.group(2):
            stage, block, rest = int(m.group(1)), int(m.group(3)), m.group(4)
            for pattern, repl in _TV_SUFFIX:
                if pattern.match(rest):
                    new = f"s{stage}.b{block + 1}." + pattern.sub(repl, rest)
                    break
        elif not m:
            for pattern, repl in _TV_OTHER:
                if pattern.match(key):
                    new = pattern.sub(repl, key)
                    break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise RegNetCheckpointError(
            f"{path} has keys that are not torchvision RegNet parameters, e.g. {unknown[:5]}."
        )
    _check_pycls_names(out, path)
    return out


# ------------------------------------------------------------------------------------------------ #
# Architecture
# ------------------------------------------------------------------------------------------------ #
def describe_stages(state: Mapping[str, torch.Tensor], prefix: str = "") -> List[StageInfo]:
    """Read stage depths and widths off the parameter shapes of a RegNet state dict.

    Args:
        state: a state dict (or any mapping name -> tensor) in pycls naming under ``prefix``.
        prefix (str): e.g. ``"backbone.bottom_up."``.
    """
    blocks: Dict[int, set] = {}
    for k in state:
        if not k.startswith(prefix):
            continue
        m = _BLOCK_RE.match(k[len(prefix) :])
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = []
    for i in sorted(blocks):
        p = f"{prefix}s{i}.b1.f."
        try:
            a, b, c = (state[p + n + ".weight"] for n in "abc")
        except KeyError as e:
            raise RegNetCheckpointError(
                f"stage s{i} block b1 has no bottleneck convolution {e}; not a RegNet."
            ) from None
        stages.append(
            StageInfo(
                name=f"s{i}",
                depth=max(blocks[i]),
                width=int(c.shape[0]),
                in_width=int(a.shape[1]),
                bottleneck_width=int(b.shape[0]),
                group_width=int(b.shape[1]),
                se=(p + "se.f_ex.0.weight") in state,
            )
        )
    return stages


def _arch_mismatches(model: List[StageInfo], source: List[StageInfo]) -> List[str]:
    if [s.name for s in model] != [s.name for s in source]:
        return [
            f"the config's RegNet has {len(model)} stages ({', '.join(s.name for s in model)}) "
            f"but SRC has {len(source)} ({', '.join(s.name for s in source)})"
        ]
    problems = []
    for m, s in zip(model, source):
        if m.depth != s.depth:
            problems.append(
                f"stage {m.name} has {_blocks(m.depth)} in the config but {s.depth} in SRC"
            )
        if m.width != s.width:
            problems.append(
                f"stage {m.name} has width {m.width} in the config but {s.width} in SRC"
            )
        if m.width == s.width and m.bottleneck_width != s.bottleneck_width:
            problems.append(
                f"stage {m.name} has bottleneck width {m.bottleneck_width} in the config but "
                f"{s.bottleneck_width} in SRC"
            )
        if m.group_width != s.group_width:
            problems.append(
                f"stage {m.name} has group width {m.group_width} in the config but "
                f"{s.group_width} in SRC"
            )
        if m.se != s.se:
            problems.append(
                f"stage {m.name} {'has' if m.se else 'has no'} squeeze-and-excitation in the "
                f"config but {'has' if s.se else 'has no'} in SRC"
            )
    return problems


def _identify(stages: List[StageInfo]) -> str:
    """A sentence naming the network a checkpoint holds, when it is a known one."""
    from d2_pillars.modeling.backbone import REGNETX_PRESETS

    depths, widths = [s.depth for s in stages], [s.width for s in stages]
    if depths == [1, 2, 7, 12] and widths == [32, 64, 160, 400]:
        return (
            "SRC is torchvision's regnet_x_400mf: torchvision rounds its last stage to 400 "
            "channels where pycls (and mmdetection3d's reference) has 384, so it cannot be "
            "loaded into the RegNetX-400MF configs.\n"
        )
    for name, p in REGNETX_PRESETS.items():
        if p["depths"] == depths and p["widths"] == widths:
            return (
                f"SRC is RegNetX-{name}: MODEL.REGNET.DEPTH {p['depth']}, W0 {p['w0']}, "
                f"WA {p['wa']}, WM {p['wm']}, GROUP_WIDTH {p['group_width']}.\n"
            )
    return ""


def _blocks(n: int) -> str:
    return f"{n} block" if n == 1 else f"{n} blocks"


def _arch_text(stages: List[StageInfo]) -> str:
    return (
        f"depths {[s.depth for s in stages]}, widths {[s.width for s in stages]}, "
        f"group widths {[s.group_width for s in stages]}"
    )


def find_regnet_prefix(model_keys) -> str:
    """Locate the RegNet inside a model: the prefix of its ``s1.b1.f.a.weight``.

    Returns e.g. ``"backbone.bottom_up."`` (FPN/SECFPN wrappers), ``"backbone."`` or ``""``.
    """
    found = [
        k[: -len(_ANCHOR_KEY)]
        for k in model_keys
        if k.endswith(_ANCHOR_KEY) and (k == _ANCHOR_KEY or k[: -len(_ANCHOR_KEY)].endswith("."))
    ]
    if not found:
        raise RegNetCheckpointError(
            f"The model has no RegNet backbone (no parameter named '*{_ANCHOR_KEY}'); "
            "set MODEL.BACKBONE.NAME to a RegNet builder (build_regnet_bev_backbone, "
            "build_regnet_fpn_backbone, build_regnet_secfpn_backbone)."
        )
    if len(found) > 1:
        raise RegNetCheckpointError(
            f"The model has several RegNets (prefixes {found}); convert with an explicit prefix."
        )
    return found[0]


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
        source: pycls-named state dict (from :func:`source_state_dict`).
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
    problems = _arch_mismatches(model_stages, source_stages)
    if problems:
        raise RegNetCheckpointError(
            f"{src_name} does not match the RegNet of the config:\n  - "
            + "\n  - ".join(problems)
            + f"\nconfig: {_arch_text(model_stages)}\nSRC:    {_arch_text(source_stages)}\n"
            + _identify(source_stages)
            + "Use the checkpoint of the config's RegNet (pycls RegNetX-400MF_dds_8gpu.pyth for "
            "the 400MF configs, RegNetX-1.6GF_dds_8gpu.pyth for 1.6GF) or change MODEL.REGNET.*."
        )
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
            m = _BLOCK_RE.match(key)
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
        if not key.startswith(prefix) or not _BLOCK_RE.match(key[len(prefix) :]):
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
