"""RegNet converter: real pycls and torchvision RegNets (random weights, built locally) are saved in
their native formats, converted, loaded into the BEV RegNet, and compared stage by stage."""

import contextlib
import io
import numpy as np
import os
import runpy
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec

from d2_pillars.checkpoint.regnet_converter import (
    CONVERTER_AUTHOR,
    convert_regnet_file,
    convert_to_model,
    format_report,
    save_converted_checkpoint,
)
from d2_pillars.checkpoint.regnet_source import RegNetCheckpointError, read_source_state_dict
from d2_pillars.checkpoint.regnet_stages import describe_stages
from d2_pillars.modeling.backbone import build_regnet_bev_backbone
from d2_pillars.structures import BOX_CONVENTION_VERSION

from regnet_reference import randomize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGENET_STEM_WIDTH = 32


# ------------------------------------------------------------------------------------------------ #
# Reference models
# ------------------------------------------------------------------------------------------------ #
def pycls_stage_outputs(model, image):
    x = model.stem(image)
    stem, outs = x, {}
    for i in range(1, 5):
        x = getattr(model, f"s{i}")(x)
        outs[f"s{i}"] = x
    return stem, outs


def torchvision_stage_outputs(model, image):
    x = model.stem(image)
    stem, outs = x, {}
    for i, stage in enumerate(model.trunk_output, 1):
        x = stage(x)
        outs[f"s{i}"] = x
    return stem, outs


def bev_regnet(cfg, *, stem_width, strides, bn_eps=1e-3):
    """The stem-less BEV RegNet of ``cfg``'s preset fed ``stem_width`` channels, with these
    stage strides and BN eps, returning s1-s4."""
    r = cfg.MODEL.REGNET
    r.STEM_WIDTH = stem_width
    r.STRIDES = list(strides)
    r.OUT_FEATURES = ["s1", "s2", "s3", "s4"]
    cfg.MODEL.BN_EPS = bn_eps
    return build_regnet_bev_backbone(cfg, ShapeSpec(channels=stem_width, stride=1))


def imagenet_like_bev_regnet(cfg):
    """The project's BEV RegNet (preset of ``cfg``) with the ImageNet stem width, strides and BN
    eps, so that fed the source stem's output it must reproduce the source stages exactly."""
    model = bev_regnet(cfg, stem_width=IMAGENET_STEM_WIDTH, strides=(2, 2, 2, 2), bn_eps=1e-5)
    return randomize(model, seed=123)  # whatever loading does not overwrite stays wrong


def _load_into(model, path):
    """Load with detectron2's stock DetectionCheckpointer; return its incompatible keys."""
    checkpointer = DetectionCheckpointer(model)
    return checkpointer._load_model(checkpointer._load_file(path))


# ------------------------------------------------------------------------------------------------ #
# Numerical equivalence with the source networks
# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize(
    "fmt,arch",
    [("pycls", "400MF"), ("pycls", "1.6GF"), ("torchvision", "1.6GF")],
)
def test_stage_outputs_match_source(regnet_sources, tmp_path, fmt, arch, regnetx_cfg):
    src_model, src_path = regnet_sources[(fmt, arch)]
    bev = imagenet_like_bev_regnet(regnetx_cfg(arch))

    state, fmt_read = read_source_state_dict(src_path)
    assert fmt_read == fmt
    converted, report = convert_to_model(state, bev.state_dict(), source_format=fmt)
    dst = str(tmp_path / "converted.pth")
    save_converted_checkpoint(dst, converted, report)
    incompatible = _load_into(bev, dst)
    assert incompatible.unexpected_keys == []
    assert incompatible.missing_keys == []
    assert incompatible.incorrect_shapes == []
    assert report.left_at_init == []  # same input width: every tensor has a source

    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if fmt == "pycls":
            stem, expected = pycls_stage_outputs(src_model, image)
        else:
            stem, expected = torchvision_stage_outputs(src_model, image)
        got = bev.eval()(stem)
    for name in ("s1", "s2", "s3", "s4"):
        assert got[name].shape == expected[name].shape, name
        diff = (got[name] - expected[name]).abs().max().item()
        assert diff <= 1e-5, f"{fmt} {arch} {name}: max abs diff {diff}"
        assert expected[name].abs().max() > 0.1  # the comparison is not between zeros


def test_torchvision_400mf_through_the_bev_regnet_classes(regnet_sources):
    """torchvision rounds RegNetX-400MF's last stage to 400 channels (pycls: 384), so no
    MODEL.REGNET generator setting builds it; the BEV RegNet's own classes with explicit widths
    still reproduce it after conversion."""
    from torch import nn

    from detectron2.modeling.backbone.regnet import AnyNet, ResBottleneckBlock

    from d2_pillars.modeling.backbone import PassThroughStem

    src_model, src_path = regnet_sources[("torchvision", "400MF")]
    state, _ = read_source_state_dict(src_path)
    stages = describe_stages(state)
    assert [s.width for s in stages] == [32, 64, 160, 400]
    bev = AnyNet(
        stem_class=PassThroughStem,
        stem_width=IMAGENET_STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depths=[s.depth for s in stages],
        widths=[s.width for s in stages],
        group_widths=[s.group_width for s in stages],
        strides=[2, 2, 2, 2],
        bottleneck_ratios=[1.0] * 4,
        se_ratio=0.0,
        activation_class=nn.ReLU,
        out_features=["s1", "s2", "s3", "s4"],
    )
    randomize(bev, seed=5)
    converted, report = convert_to_model(state, bev.state_dict(), source_format="torchvision")
    missing, unexpected = bev.load_state_dict(converted, strict=True)
    assert (missing, unexpected) == ([], [])
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stem, expected = torchvision_stage_outputs(src_model, image)
        got = bev.eval()(stem)
    for name in expected:
        assert (got[name] - expected[name]).abs().max().item() <= 1e-5, name


# ------------------------------------------------------------------------------------------------ #
# The real configuration: stem width 64, strides (1, 2, 2, 2), inside PointPillars
# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize(
    "backbone_name,prefix",
    [
        ("build_regnet_fpn_backbone", "backbone.bottom_up."),
        ("build_regnet_secfpn_backbone", "backbone.bottom_up."),
    ],
)
def test_convert_file_for_pointpillars_config(
    regnet_sources, tmp_path, backbone_name, prefix, regnet_pointpillars
):
    cfg, model = regnet_pointpillars("400MF", backbone_name)
    config_file = str(tmp_path / "config.yaml")
    with open(config_file, "w") as f:
        f.write(cfg.dump())
    src_model, src_path = regnet_sources[("pycls", "400MF")]
    dst = str(tmp_path / "regnetx_400mf_bev.pth")

    report = convert_regnet_file(src_path, dst, config_file=config_file)

    assert report.prefix == prefix
    # pycls 400MF: 6 stem + 2 classifier tensors and the two 64-vs-32-input convs are dropped
    assert sorted(k for k, _ in report.dropped) == sorted(
        ["s1.b1.f.a.weight", "s1.b1.proj.weight", "head.fc.weight", "head.fc.bias"]
        + ["stem.conv.weight"]
        + [f"stem.bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        + ["stem.bn.num_batches_tracked"]
    )
    assert sorted((k, s) for k, s, _ in report.left_at_init) == [
        (prefix + "s1.b1.f.a.weight", (32, 64, 1, 1)),
        (prefix + "s1.b1.proj.weight", (32, 64, 1, 1)),
    ]
    assert len(report.mapped) == len(src_model.state_dict()) - 10

    saved = torch.load(dst, weights_only=True)
    assert saved["__author__"] == CONVERTER_AUTHOR
    assert saved["matching_heuristics"] is False
    assert saved["box_convention_version"] == BOX_CONVENTION_VERSION

    init_first = model.state_dict()[prefix + "s1.b1.f.a.weight"].clone()
    incompatible = _load_into(model, dst)
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    model_state = model.state_dict()
    regnet_missing = [k for k in incompatible.missing_keys if k.startswith(prefix)]
    assert sorted(regnet_missing) == [prefix + "s1.b1.f.a.weight", prefix + "s1.b1.proj.weight"]
    for key, value in src_model.state_dict().items():
        if prefix + key in model_state and prefix + key not in regnet_missing:
            assert torch.equal(model_state[prefix + key], value), key
    assert torch.equal(model_state[prefix + "s1.b1.f.a.weight"], init_first)

    text = format_report(report)
    assert "s1.b1.f.a.weight" in text and "ImageNet classifier" in text


def test_arch_mismatch_names_the_stage(regnet_sources, regnet_pointpillars):
    _, model = regnet_pointpillars("400MF")
    state, _ = read_source_state_dict(regnet_sources[("pycls", "1.6GF")][1])
    with pytest.raises(RegNetCheckpointError) as e:
        convert_to_model(state, model.state_dict(), src_name="RegNetX-1.6GF_dds_8gpu.pyth")
    msg = str(e.value)
    assert "RegNetX-1.6GF_dds_8gpu.pyth does not match" in msg
    assert "stage s3 has 7 blocks in the config but 10 in SRC" in msg
    assert "stage s1 has 1 block in the config but 2 in SRC" in msg
    assert "stage s4 has width 384 in the config but 912 in SRC" in msg
    assert "SRC is RegNetX-1.6GF: MODEL.REGNET.DEPTH 18, W0 80, WA 34.01" in msg


def test_torchvision_400mf_does_not_fit_the_pycls_400mf_config(regnet_sources, regnet_pointpillars):
    _, model = regnet_pointpillars("400MF")
    state, _ = read_source_state_dict(regnet_sources[("torchvision", "400MF")][1])
    with pytest.raises(RegNetCheckpointError) as e:
        convert_to_model(state, model.state_dict())
    assert "stage s4 has width 384 in the config but 400 in SRC" in str(e.value)
    assert "torchvision's regnet_x_400mf" in str(e.value)
    assert "stage s3" not in str(e.value)  # only the real difference is named


def test_first_block_without_projection_drops_it(regnet_sources, regnetx_cfg):
    """1.6GF with input width 72 = s1 width and stride 1: the model's s1.b1 has no shortcut
    projection, so the source's is dropped with a reason instead of becoming unexpected."""
    model = bev_regnet(regnetx_cfg("1.6GF"), stem_width=72, strides=(1, 2, 2, 2))
    src = regnet_sources[("pycls", "1.6GF")][0].state_dict()
    converted, report = convert_to_model(src, model.state_dict())
    assert "s1.b1.proj.weight" not in model.state_dict()
    reasons = dict(report.dropped)
    assert "no shortcut projection" in reasons["s1.b1.proj.weight"]
    assert "no shortcut projection" in reasons["s1.b1.bn.running_var"]
    assert "input width" in reasons["s1.b1.f.a.weight"]  # 72 inputs vs ImageNet's 32
    assert [k for k, _, _ in report.left_at_init] == ["s1.b1.f.a.weight"]
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == [] and missing == ["s1.b1.f.a.weight"]


def test_unchecked_conversion_without_model(regnet_sources):
    src = regnet_sources[("pycls", "400MF")][0].state_dict()
    converted, report = convert_to_model(src, None)
    assert report.prefix == "backbone.bottom_up."
    assert "backbone.bottom_up.s1.b1.f.a.weight" in converted
    assert not any("stem" in k or "head" in k for k in converted)
    assert len(converted) == len(src) - 8


def test_output_name_and_atomic_write(regnet_sources, tmp_path):
    with pytest.raises(ValueError, match=r"\*\.pth"):
        convert_regnet_file(regnet_sources[("pycls", "400MF")][1], str(tmp_path / "x.pkl"))
    dst = tmp_path / "out.pth"
    convert_regnet_file(regnet_sources[("pycls", "400MF")][1], str(dst))
    assert sorted(os.listdir(tmp_path)) == ["out.pth"]  # no temporary file left


# ------------------------------------------------------------------------------------------------ #
# CLI
# ------------------------------------------------------------------------------------------------ #
def _run_cli(argv):
    module = runpy.run_path(os.path.join(REPO, "tools", "convert_regnet.py"), run_name="cli")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = module["main"](argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli(regnet_sources, tmp_path, regnet_pointpillars):
    cfg, _ = regnet_pointpillars("400MF")
    config_file = str(tmp_path / "config.yaml")
    with open(config_file, "w") as f:
        f.write(cfg.dump())
    dst = str(tmp_path / "tv.pth")
    rc, out, err = _run_cli(
        [
            regnet_sources[("pycls", "1.6GF")][1],
            dst,
            "--format",
            "auto",
            "--config-file",
            config_file,
        ]
    )
    assert rc == 1 and not os.path.exists(dst)
    assert "stage s3 has 7 blocks in the config but 10 in SRC" in err

    rc, out, err = _run_cli(
        [regnet_sources[("pycls", "400MF")][1], dst, "--config-file", config_file]
    )
    assert rc == 0, err
    assert "backbone.bottom_up.s1.b1.f.a.weight" in out and "left at initialisation" in out
    assert "ImageNet stem" in out
    loaded = torch.load(dst, weights_only=True)["model"]
    src = torch.load(regnet_sources[("pycls", "400MF")][1], weights_only=True)["model_state"]
    np.testing.assert_array_equal(
        loaded["backbone.bottom_up.s4.b12.f.c_bn.running_var"].numpy(),
        src["s4.b12.f.c_bn.running_var"].numpy(),
    )
