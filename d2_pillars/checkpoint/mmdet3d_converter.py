# -*- coding: utf-8 -*-
"""mmdetection3d PointPillars checkpoints -> d2_pillars checkpoints (``tools/convert_mmdet3d.py``).

Every tensor of the reference's ``pts_voxel_encoder`` (``HardVFE``), ``pts_backbone`` (``SECOND``
or mmdet's stem-less ``RegNet``), ``pts_neck`` (mmdet ``FPN`` or ``SECONDFPN``) and
``pts_bbox_head`` (``Anchor3DHead``) is renamed onto this package's model; nothing is left at
initialisation and nothing is dropped, or the conversion fails naming the key.

Box conventions (``shared/reference/model_zoo.md``):

- **1.x** (mmdetection3d >= 1.0.0rc0): anchors ``[l, w, h]``, yaw from +x, direction offset
  ``-0.7854``: the package's convention. The head's weights are copied as they are.
- **0.x** (before 1.0; the published RegNet checkpoints): the head is rewritten exactly for the
  package's convention by :mod:`.mmdet3d_legacy`, and the direction offset it needs is stored in
  the checkpoint as ``head.dir_offset`` (the head takes it over from the config).
"""
import math
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
import torch
from tabulate import tabulate

from d2_pillars.modeling.anchor_head import Anchor3DHead
from d2_pillars.structures import BOX_CONVENTION_VERSION
from d2_pillars.utils.file_io import atomic_open

from .mmdet3d_legacy import HeadLayout, LegacyHeadError, legacy_dir_offset, legacy_head_to_current

__all__ = [
    "CONVENTIONS",
    "MMDet3DCheckpointError",
    "MMDet3DConversionReport",
    "is_mmdet3d_state_dict",
    "read_mmdet3d_checkpoint",
    "load_torch_file",
    "load_with_placeholders",
    "resolve_convention",
    "convert_mmdet3d_state_dict",
    "convert_mmdet3d_to_model",
    "format_mmdet3d_report",
    "convert_mmdet3d_file",
]

CONVENTIONS = ("auto", "1.x", "0.x")
CONVERTER_AUTHOR = "d2_pillars convert_mmdet3d"
_REFERENCE_PREFIXES = ("pts_voxel_encoder.", "pts_backbone.", "pts_neck.", "pts_bbox_head.")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


class MMDet3DCheckpointError(ValueError):
    """An mmdetection3d checkpoint that cannot be converted for the given config."""


# ------------------------------------------------------------------------------------------------ #
# Reading
# ------------------------------------------------------------------------------------------------ #
class _Opaque:
    """Stands for an object of a class this reader does not import (training-state objects of
    mmengine checkpoints: message hub, history buffers, numpy arrays). Built from nothing and
    inert: no code of the original class runs."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def load_torch_file(path: str):
    """``torch.load(weights_only=True)`` on the CPU. If the file also pickles objects of other
    classes (mmengine's training state), those globals are allowed *as* :class:`_Opaque`
    placeholders and the load is retried, still with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # not a torch file, truncated, ...
        raise MMDet3DCheckpointError(f"Cannot read {path} as a torch checkpoint: {e}") from e
    return load_with_placeholders(path)


def load_with_placeholders(path: str):
    """The second step of :func:`load_torch_file`: ``torch.load(weights_only=True)`` with the
    file's other globals allowed as inert :class:`_Opaque` placeholders."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Opaque, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MMDet3DCheckpointError(
            f"Cannot read {path} with torch.load(weights_only=True), even with its other objects "
            f"read as placeholders: {e}\nIf you trust the file, keep just its weights: "
            "c = torch.load(SRC, weights_only=False); torch.save({'meta': {'mmdet3d_version': "
            "c['meta']['mmdet3d_version']}, 'state_dict': c['state_dict']}, DST)"
        ) from e


def is_mmdet3d_state_dict(state) -> bool:
    """True for a state dict with the reference's ``pts_*`` module names."""
    return (
        isinstance(state, Mapping)
        and len(state) > 0
        and any(isinstance(k, str) and k.startswith(_REFERENCE_PREFIXES) for k in state)
    )


def split_mmdet3d_checkpoint(obj, path: str = "SRC") -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a loaded mmdetection3d checkpoint (``{"meta", "state_dict"}``
    or a bare state dict; a ``module.`` prefix of DataParallel is removed)."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
    else:
        state, meta = obj, {}
    if not isinstance(meta, Mapping):
        meta = {}
    if isinstance(state, Mapping) and state and all(str(k).startswith("module.") for k in state):
        state = OrderedDict((k[len("module.") :], v) for k, v in state.items())
    if not is_mmdet3d_state_dict(state):
        raise MMDet3DCheckpointError(
            f"{path} is not an mmdetection3d PointPillars checkpoint: its state dict has no "
            f"{'/'.join(p.rstrip('.') for p in _REFERENCE_PREFIXES)} entries. d2_pillars "
            "checkpoints load directly with MODEL.WEIGHTS; ImageNet RegNets convert with "
            "tools/convert_regnet.py."
        )
    return OrderedDict(state), dict(meta)


def read_mmdet3d_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read an mmdetection3d checkpoint file: ``(state_dict, meta)`` (see
    :func:`split_mmdet3d_checkpoint`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    return split_mmdet3d_checkpoint(load_torch_file(path), path)


def resolve_convention(requested: str, meta: Mapping, path: str = "SRC") -> str:
    """The box convention ``"1.x"`` or ``"0.x"`` of a checkpoint.

    ``"auto"`` reads ``meta["mmdet3d_version"]``: a major version of 0 is 0.x (1.0.0rc0 and later
    releases use the 1.x convention).
    """
    if requested not in CONVENTIONS:
        raise MMDet3DCheckpointError(
            f"--source-convention must be one of {CONVENTIONS}, got {requested!r}"
        )
    if requested != "auto":
        return requested
    version = meta.get("mmdet3d_version")
    match = re.match(r"\s*v?(\d+)\.", str(version)) if version is not None else None
    if match is None:
        raise MMDet3DCheckpointError(
            f"{path} records no mmdet3d_version in its meta (found {version!r}), so its box "
            "convention is unknown: pass --source-convention 1.x or 0.x (the model zoo table in "
            "the README gives it for every published checkpoint)."
        )
    return "0.x" if int(match.group(1)) < 1 else "1.x"


# ------------------------------------------------------------------------------------------------ #
# Key mapping
# ------------------------------------------------------------------------------------------------ #
def _find_prefix(model_keys: Sequence[str], suffix: str) -> Optional[str]:
    found = [k[: -len(suffix)] for k in model_keys if k.endswith(suffix)]
    return found[0] if len(found) == 1 else None


_REGNET_PARTS = {
    "conv1": "f.a",
    "bn1": "f.a_bn",
    "conv2": "f.b",
    "bn2": "f.b_bn",
    "conv3": "f.c",
    "bn3": "f.c_bn",
    "downsample.0": "proj",
    "downsample.1": "bn",
}


def _rename_rules(model_keys: Sequence[str]):
    """(regex, replacement function, component) rules from reference names to the model's."""
    encoder = _find_prefix(model_keys, "linears.0.weight")
    bottom_up_regnet = _find_prefix(model_keys, "s1.b1.f.a.weight")
    bottom_up_second = _find_prefix(model_keys, "s1.0.weight")
    deblocks = _find_prefix(model_keys, "deblocks.0.0.weight")
    head = _find_prefix(model_keys, "conv_cls.weight")
    fpn_stages = sorted(
        int(m.group(1))
        for k in model_keys
        for m in [re.search(r"fpn_lateral(\d+)\.weight$", k)]
        if m is not None
    )
    fpn = _find_prefix(model_keys, f"fpn_lateral{fpn_stages[0]}.weight") if fpn_stages else None

    def fpn_name(kind):
        def f(m):
            i = int(m.group(1))
            if i >= len(fpn_stages):
                return None
            norm = ".norm" if m.group(2) == "bn" else ""
            return f"{fpn}fpn_{kind}{fpn_stages[i]}{norm}.{m.group(3)}"

        return f

    rules = []
    if encoder is not None:
        rules += [
            (
                r"^pts_voxel_encoder\.vfe_layers\.(\d+)\.linear\.weight$",
                lambda m: f"{encoder}linears.{m.group(1)}.weight",
                "pillar encoder",
            ),
            (
                rf"^pts_voxel_encoder\.vfe_layers\.(\d+)\.norm\.{_BN}$",
                lambda m: f"{encoder}norms.{m.group(1)}.{m.group(2)}",
                "pillar encoder",
            ),
        ]
    if bottom_up_regnet is not None:
        parts = "|".join(re.escape(p) for p in _REGNET_PARTS)
        rules.append(
            (
                rf"^pts_backbone\.layer(\d+)\.(\d+)\.({parts})\.(.+)$",
                lambda m: f"{bottom_up_regnet}s{m.group(1)}.b{int(m.group(2)) + 1}."
                f"{_REGNET_PARTS[m.group(3)]}.{m.group(4)}",
                "backbone (RegNet)",
            )
        )
    if bottom_up_second is not None:
        # blocks.i = [conv, BN, ReLU] x (1 + layer_num): module j // 3 of stage i + 1

        def second_name(m):
            j = int(m.group(2))
            if j % 3 == 0 and m.group(3) == "weight":
                return f"{bottom_up_second}s{int(m.group(1)) + 1}.{j // 3}.weight"
            if j % 3 == 1:
                return f"{bottom_up_second}s{int(m.group(1)) + 1}.{j // 3}.norm.{m.group(3)}"
            return None

        rules.append(
            (rf"^pts_backbone\.blocks\.(\d+)\.(\d+)\.{_BN}$", second_name, "backbone (SECOND)")
        )
    if fpn is not None:
        rules += [
            (
                rf"^pts_neck\.lateral_convs\.(\d+)\.(conv|bn)\.{_BN}$",
                fpn_name("lateral"),
                "neck (FPN)",
            ),
            (
                rf"^pts_neck\.fpn_convs\.(\d+)\.(conv|bn)\.{_BN}$",
                fpn_name("output"),
                "neck (FPN)",
            ),
        ]
    if deblocks is not None:
        rules.append(
            (
                r"^pts_neck\.deblocks\.(\d+)\.([01])\.(.+)$",
                lambda m: f"{deblocks}deblocks.{m.group(1)}.{m.group(2)}.{m.group(3)}",
                "neck (SECFPN)",
            )
        )
    if head is not None:
        names = {"conv_cls": "conv_cls", "conv_reg": "conv_reg", "conv_dir_cls": "conv_dir"}
        rules.append(
            (
                r"^pts_bbox_head\.(conv_cls|conv_reg|conv_dir_cls)\.(weight|bias)$",
                lambda m: f"{head}{names[m.group(1)]}.{m.group(2)}",
                "head",
            )
        )
    return [(re.compile(p), f, c) for p, f, c in rules], head


# ------------------------------------------------------------------------------------------------ #
# Conversion
# ------------------------------------------------------------------------------------------------ #
@dataclass
class MMDet3DConversionReport:
    """What :func:`convert_mmdet3d_state_dict` did."""

    convention: str
    mmdet3d_version: Optional[str]
    # (source key, model key, shape, component)
    mapped: List[Tuple[str, str, Tuple[int, ...], str]] = field(default_factory=list)
    dir_offset: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def convert_mmdet3d_state_dict(
    source: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    layout: HeadLayout,
    *,
    convention: str,
    mmdet3d_version: Optional[str] = None,
    config_name: str = "the config",
    src_name: str = "SRC",
) -> Tuple["OrderedDict[str, torch.Tensor]", MMDet3DConversionReport]:
    """
    Map every tensor of an mmdetection3d state dict onto the model.

    Args:
        source: the reference's state dict (``pts_*`` names).
        model_state: the target model's ``state_dict()`` (names and shapes).
        layout (HeadLayout): the target head's anchors / classes / code size.
        convention (str): "1.x" or "0.x" (see :func:`resolve_convention`).
        mmdet3d_version (str or None): recorded in the report.
        config_name, src_name (str): named in error messages.

    Returns:
        (state dict with the model's names, report). The state dict covers every model entry.

    Raises:
        MMDet3DCheckpointError: a source tensor has no place in the model, a shape differs, or
            a model tensor is not provided.
    """
    if convention not in ("1.x", "0.x"):
        raise MMDet3DCheckpointError(f"convention must be '1.x' or '0.x', got {convention!r}")
    model_keys = list(model_state.keys())
    rules, head_prefix = _rename_rules(model_keys)
    report = MMDet3DConversionReport(convention, mmdet3d_version)
    out = OrderedDict()
    unplaced = []
    for key, value in source.items():
        if not torch.is_tensor(value):
            unplaced.append(f"{key} (not a tensor: {type(value).__name__})")
            continue
        target = component = None
        for pattern, rename, comp in rules:
            m = pattern.match(key)
            if m is not None:
                target, component = rename(m), comp
                break
        if target is None or target not in model_state:
            unplaced.append(key if target is None else f"{key} (would be {target})")
            continue
        expected = tuple(model_state[target].shape)
        if tuple(value.shape) != expected:
            raise MMDet3DCheckpointError(
                f"{src_name}: {key} has shape {tuple(value.shape)} but {config_name}'s model "
                f"expects {expected} for {target}: the checkpoint was trained with another "
                "architecture (backbone width, anchors, classes or point features); convert it "
                "with the config of the same mmdetection3d model (README, model zoo)."
            )
        if target in out:
            raise MMDet3DCheckpointError(f"{src_name}: two tensors map to {target}")
        out[target] = value.detach().to(model_state[target].dtype).clone()
        report.mapped.append((key, target, tuple(value.shape), component))
    if unplaced:
        raise MMDet3DCheckpointError(
            f"{src_name}: {len(unplaced)} tensors have no place in {config_name}'s model: "
            f"{_first_few(unplaced)}. Use the d2_pillars config of the same mmdetection3d model "
            "(README, model zoo)."
        )
    if head_prefix is not None:
        dir_key = head_prefix + "dir_offset"
        if convention == "0.x":
            convs = {k[len(head_prefix) :]: v for k, v in out.items() if k.startswith(head_prefix)}
            try:
                converted = legacy_head_to_current(convs, layout)
            except LegacyHeadError as e:
                raise MMDet3DCheckpointError(f"{src_name}: {e}") from e
            for k, v in converted.items():
                out[head_prefix + k] = v
            report.dir_offset = legacy_dir_offset()
            report.notes.append(
                "0.x head rewritten: anchors paired by footprint, (w, l) residuals swapped, yaw "
                f"residual negated and shifted; direction offset {report.dir_offset:.7f} rad "
                "(0.x +0.7854 in the 0.x yaw frame)"
            )
        elif dir_key in model_state:
            report.dir_offset = float(model_state[dir_key])
        if dir_key in model_state:
            out[dir_key] = torch.tensor(report.dir_offset, dtype=torch.float64)
    missing = [k for k in model_keys if k not in out]
    if missing:
        raise MMDet3DCheckpointError(
            f"{src_name} does not provide {len(missing)} tensors of {config_name}'s model: "
            f"{_first_few(missing)}. The checkpoint is of another mmdetection3d model; use the "
            "matching config."
        )
    return OrderedDict((k, out[k]) for k in model_keys), report


def _first_few(keys: Sequence[str], few: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > few else ""
    return ", ".join(keys[:few]) + more


def _model_and_layout(model):
    heads = [m for m in model.modules() if isinstance(m, Anchor3DHead)]
    if len(heads) != 1:
        raise MMDet3DCheckpointError(
            f"the model has {len(heads)} Anchor3DHead modules; an mmdetection3d PointPillars "
            "checkpoint needs exactly one"
        )
    return model.state_dict(), HeadLayout.from_head(heads[0])


def convert_mmdet3d_to_model(
    obj, model, *, convention="auto", path="SRC", config_name="the config"
):
    """Convert a loaded mmdetection3d checkpoint (``torch.load`` output) for ``model``.

    Returns:
        (state dict, report), as :func:`convert_mmdet3d_state_dict`.
    """
    source, meta = split_mmdet3d_checkpoint(obj, path)
    convention = resolve_convention(convention, meta, path)
    model_state, layout = _model_and_layout(model)
    version = meta.get("mmdet3d_version")
    return convert_mmdet3d_state_dict(
        source,
        model_state,
        layout,
        convention=convention,
        mmdet3d_version=None if version is None else str(version),
        config_name=config_name,
        src_name=path,
    )


def make_mmdet3d_checkpoint(state, report: MMDet3DConversionReport, src: str = "") -> dict:
    """The detectron2 checkpoint dict of a converted state dict (plain types only)."""
    return {
        "model": OrderedDict(state),
        "__author__": CONVERTER_AUTHOR,
        "matching_heuristics": False,
        "box_convention_version": BOX_CONVENTION_VERSION,
        "source_format": "mmdetection3d",
        "source_convention": report.convention,
        "source_mmdet3d_version": report.mmdet3d_version or "",
        "source_file": os.path.basename(src),
    }


def format_mmdet3d_report(report: MMDet3DConversionReport, verbose: bool = False) -> str:
    """A table of what went where: per component, tensors and parameters; every key with
    ``verbose``."""
    lines = [
        f"mmdetection3d checkpoint ({report.convention} convention"
        + (f", mmdet3d {report.mmdet3d_version}" if report.mmdet3d_version else "")
        + f"): {len(report.mapped)} tensors mapped, 0 dropped, 0 left at initialisation."
    ]
    groups: Dict[str, List] = OrderedDict()
    for src, dst, shape, comp in report.mapped:
        groups.setdefault(comp, []).append((src, dst, shape))
    rows = []
    for comp, items in groups.items():
        numel = sum(math.prod(s) for _, _, s in items)
        src_root = os.path.commonprefix([s for s, _, _ in items]).rsplit(".", 1)[0]
        dst_root = os.path.commonprefix([d for _, d, _ in items]).rsplit(".", 1)[0]
        rows.append((comp, len(items), f"{numel:,}", src_root + ".*", dst_root + ".*"))
    lines.append(
        tabulate(
            rows,
            headers=["component", "tensors", "values", "from (mmdetection3d)", "to (d2_pillars)"],
            tablefmt="pipe",
        )
    )
    if report.dir_offset is not None:
        lines.append(f"head.dir_offset = {report.dir_offset:.7f} rad (stored in the checkpoint)")
    lines.extend(report.notes)
    if verbose:
        lines.append(
            tabulate(
                [(s, d, "x".join(map(str, sh))) for s, d, sh, _ in report.mapped],
                headers=["mmdetection3d key", "d2_pillars key", "shape"],
                tablefmt="pipe",
            )
        )
    return "\n".join(lines)


def convert_mmdet3d_file(
    src: str, dst: str, model, *, convention: str = "auto", config_name: str = "the config"
) -> MMDet3DConversionReport:
    """Convert the mmdetection3d checkpoint ``src`` for ``model`` (built from the config named
    ``config_name``) into ``dst``, a detectron2 ``.pth`` written atomically; on any error nothing
    is written."""
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"Output {dst} would overwrite the input; choose another name.")
    if dst.endswith((".pkl", ".pyth")):
        raise ValueError(
            f"Output {dst}: detectron2 reads .pkl and .pyth files as other formats; name the "
            "converted checkpoint *.pth."
        )
    if not os.path.isfile(src):
        raise FileNotFoundError(f"Checkpoint file {src} does not exist.")
    state, report = convert_mmdet3d_to_model(
        load_torch_file(src), model, convention=convention, path=src, config_name=config_name
    )
    with atomic_open(dst, "wb") as f:
        torch.save(make_mmdet3d_checkpoint(state, report, src), f)
    return report
