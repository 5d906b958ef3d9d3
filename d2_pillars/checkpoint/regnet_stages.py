# -*- coding: utf-8 -*-
"""What RegNet a state dict holds: stage depths and widths read off the parameter shapes
(:func:`describe_stages`), where the RegNet sits inside a model (:func:`find_regnet_prefix`), and
how a checkpoint's RegNet differs from the config's (:func:`check_same_architecture`, whose error
names each difference and the network the checkpoint holds when it is a known one).
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping
import torch

from .regnet_source import PYCLS_BLOCK_RE, RegNetCheckpointError

__all__ = ["StageInfo", "describe_stages", "find_regnet_prefix", "check_same_architecture"]

# A parameter that exists in every RegNet block layout; its name locates the RegNet in a model.
_ANCHOR_KEY = "s1.b1.f.a.weight"


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
        m = PYCLS_BLOCK_RE.match(k[len(prefix) :])
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


def check_same_architecture(
    model_stages: List[StageInfo], source_stages: List[StageInfo], src_name: str = "SRC"
) -> None:
    """Raise :class:`RegNetCheckpointError` naming every difference (stage depths, widths, group
    widths, SE) between the config's RegNet and the checkpoint ``src_name``'s."""
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
