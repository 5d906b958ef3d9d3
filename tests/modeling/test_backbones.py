import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, build_backbone

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.backbone import (
    REGNETX_PRESETS,
    SECOND,
    SECONDFPN,
    build_bev_regnet,
    get_bev_norm,
)

BUILDERS = [
    "build_second_backbone",
    "build_regnet_bev_backbone",
    "build_second_secfpn_backbone",
    "build_regnet_secfpn_backbone",
    "build_second_fpn_backbone",
    "build_regnet_fpn_backbone",
]


def _cfg(name, **regnet):
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    if "second" in name:
        cfg.MODEL.FPN.IN_FEATURES = ["s1", "s2", "s3"]
        cfg.MODEL.SECFPN.IN_FEATURES = ["s1", "s2", "s3"]
    else:
        cfg.MODEL.FPN.IN_FEATURES = ["s2", "s3", "s4"]
        cfg.MODEL.SECFPN.IN_FEATURES = ["s2", "s3", "s4"]
    for k, v in regnet.items():
        setattr(cfg.MODEL.REGNET, k, v)
    return cfg


def _bns(module):
    return [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]


def _pycls_regnet(pycls_regnetx, preset):
    """pycls 0.1.1's own ImageNet RegNet for a preset: (its get_args(), the model or, for the
    large 3.2GF, None)."""
    with pycls_regnetx(preset) as PyclsRegNet:
        args = PyclsRegNet.get_args()
        torch.manual_seed(0)
        model = PyclsRegNet() if preset != "3.2GF" else None
    return args, model


def _bev_regnet(preset, in_channels, strides=(1, 2, 2, 2)):
    p = REGNETX_PRESETS[preset]
    return build_bev_regnet(
        in_channels=in_channels,
        depth=p["depth"],
        w0=p["w0"],
        wa=p["wa"],
        wm=p["wm"],
        group_width=p["group_width"],
        strides=list(strides),
        out_features=["s1", "s2", "s3", "s4"],
    )


def _stage_summary(stage):
    blocks = list(stage.children())
    return {
        "depth": len(blocks),
        "width": {b.f.c.out_channels for b in blocks},
        "groups": {b.f.b.groups for b in blocks},
    }


def _num_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", ["400MF", "1.6GF", "3.2GF"])
def test_regnetx_presets_match_pycls_generator(preset, pycls_regnetx):
    args, _ = _pycls_regnet(pycls_regnetx, preset)
    p = REGNETX_PRESETS[preset]
    assert args["ws"] == p["widths"] and args["ds"] == p["depths"]
    assert [w // g for w, g in zip(args["ws"], args["gws"])] == p["groups"]
    model = _bev_regnet(preset, 64)
    for i, (w, d, g) in enumerate(zip(p["widths"], p["depths"], p["groups"]), start=1):
        assert _stage_summary(getattr(model, f"s{i}")) == {"depth": d, "width": {w}, "groups": {g}}


@pytest.mark.parametrize("preset", ["400MF", "1.6GF"])
def test_bev_regnet_stages_equal_pycls_model(preset, pycls_regnetx):
    _, pycls_model = _pycls_regnet(pycls_regnetx, preset)
    stem_width = pycls_model.stem.conv.out_channels  # 32
    # pycls's input width and strides: s1.b1 then has pycls's stride-2 shortcut projection
    same_input = _bev_regnet(preset, stem_width, strides=(2, 2, 2, 2))
    bev = _bev_regnet(preset, 64)
    pycls_state = pycls_model.state_dict()
    for i in range(1, 5):
        name = f"s{i}"
        ref_stage = getattr(pycls_model, name)
        assert _stage_summary(getattr(same_input, name)) == _stage_summary(ref_stage)
        assert _num_params(getattr(same_input, name)) == _num_params(ref_stage)
        # parameter names and shapes are pycls's: ImageNet checkpoints load by name
        ours = {f"{name}.{k}": v.shape for k, v in getattr(same_input, name).state_dict().items()}
        theirs = {k: v.shape for k, v in pycls_state.items() if k.startswith(name + ".")}
        assert ours == theirs
        if i > 1:
            assert _num_params(getattr(bev, name)) == _num_params(ref_stage)
    # with 64 pillar channels only s1.b1's 1x1 conv "a" and its shortcut "proj" grow
    w1 = REGNETX_PRESETS[preset]["widths"][0]
    extra = (64 - stem_width) * (w1 + w1)
    assert _num_params(bev.s1) == _num_params(pycls_model.s1) + extra


def test_regnet_strides_and_shapes():
    model = build_backbone(_cfg("build_regnet_bev_backbone"), ShapeSpec(channels=64, stride=1))
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "s2": (64, 2),
        "s3": (160, 4),
        "s4": (384, 8),
    }
    out = model(torch.randn(1, 64, 32, 48))
    for k, v in out.items():
        assert v.shape == (1, shapes[k].channels, 32 // shapes[k].stride, 48 // shapes[k].stride)
    bns = _bns(model)
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)


def test_regnet_config_errors():
    with pytest.raises(ValueError, match="STRIDES"):
        build_backbone(_cfg("build_regnet_bev_backbone", STRIDES=[1, 2, 2]), ShapeSpec(channels=64))
    with pytest.raises(ValueError, match="STEM_WIDTH"):
        build_backbone(_cfg("build_regnet_bev_backbone"), ShapeSpec(channels=32))


@pytest.mark.parametrize("norm", ["naiveSyncBN", "FrozenBN"])
def test_regnet_norms(norm):
    model = build_backbone(
        _cfg("build_regnet_bev_backbone", NORM=norm), ShapeSpec(channels=64, stride=1)
    )
    kind = NaiveSyncBatchNorm if norm == "naiveSyncBN" else FrozenBatchNorm2d
    bns = _bns(model)
    assert bns and all(type(bn) is kind and bn.eps == 1e-3 for bn in bns)


def test_regnet_freeze_at():
    model = build_backbone(
        _cfg("build_regnet_bev_backbone", FREEZE_AT=2), ShapeSpec(channels=64, stride=1)
    )
    assert all(not p.requires_grad for p in model.s1.parameters())
    assert all(type(bn) is FrozenBatchNorm2d and bn.eps == 1e-3 for bn in _bns(model.s1))
    assert all(p.requires_grad for p in model.s2.parameters())
    assert all(type(bn) is nn.BatchNorm2d for bn in _bns(model.s2))


def test_second_structure():
    model = SECOND(
        in_channels=64,
        out_channels=[64, 128, 256],
        layer_nums=[3, 5, 5],
        layer_strides=[2, 2, 2],
        norm=get_bev_norm("BN"),
        out_features=["s1", "s2", "s3"],
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 + 6 + 6 and all(c.bias is None for c in convs)
    expected = 0
    for c_in, c_out, n in [(64, 64, 3), (64, 128, 5), (128, 256, 5)]:
        expected += 9 * c_in * c_out + 2 * c_out + n * (9 * c_out * c_out + 2 * c_out)
    assert _num_params(model) == expected
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in _bns(model))
    out = model(torch.randn(2, 64, 16, 24))
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 64, 8, 12),
        (2, 128, 4, 6),
        (2, 256, 2, 3),
    ]
    assert all((v >= 0).all() for v in out.values())  # ReLU after every conv
    with pytest.raises(ValueError, match="same length"):
        SECOND(in_channels=64, out_channels=[64], layer_nums=[3, 5], layer_strides=[2, 2])


@pytest.mark.parametrize("name", ["build_second_fpn_backbone", "build_regnet_fpn_backbone"])
def test_fpn_outputs(name):
    model = build_backbone(_cfg(name), ShapeSpec(channels=64, stride=1))
    assert isinstance(model, FPN)
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p1": (256, 2),
        "p2": (256, 4),
        "p3": (256, 8),
    }
    out = model(torch.randn(1, 64, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p1": (1, 256, 16, 16),
        "p2": (1, 256, 8, 8),
        "p3": (1, 256, 4, 4),
    }
    assert all((v >= 0).all() for v in out.values())  # the reference's ReLU
    fpn_convs = model.lateral_convs + model.output_convs
    assert all(c.bias is None and c.norm.eps == 1e-3 and c.norm.momentum == 0.01 for c in fpn_convs)

    cfg = _cfg(name)
    cfg.MODEL.FPN.ACTIVATION = ""
    plain = build_backbone(cfg, ShapeSpec(channels=64, stride=1))
    assert any((v < 0).any() for v in plain(torch.randn(1, 64, 32, 32)).values())


@pytest.mark.parametrize("name", ["build_second_secfpn_backbone", "build_regnet_secfpn_backbone"])
def test_secfpn_outputs(name):
    model = build_backbone(_cfg(name), ShapeSpec(channels=64, stride=1))
    assert isinstance(model, SECONDFPN)
    assert model.output_shape() == {"secfpn": ShapeSpec(channels=384, stride=2)}
    deconvs = [m for m in model.deblocks.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.kernel_size, d.stride) for d in deconvs] == [((s, s), (s, s)) for s in (1, 2, 4)]
    assert all(d.bias is None for d in deconvs)
    out = model(torch.randn(2, 64, 32, 40))
    assert list(out) == ["secfpn"] and out["secfpn"].shape == (2, 384, 16, 20)
    assert (out["secfpn"] >= 0).all()


def test_secfpn_config_errors():
    cfg = _cfg("build_second_secfpn_backbone")
    cfg.MODEL.SECFPN.UPSAMPLE_STRIDES = [1, 2, 2]
    with pytest.raises(ValueError, match="different strides"):
        build_backbone(cfg, ShapeSpec(channels=64, stride=1))
    cfg = _cfg("build_second_secfpn_backbone")
    cfg.MODEL.SECFPN.IN_FEATURES = ["s2", "s3", "s4"]
    with pytest.raises(ValueError, match="does not output"):
        build_backbone(cfg, ShapeSpec(channels=64, stride=1))


@pytest.mark.parametrize("name", BUILDERS)
def test_registered_and_size_divisibility(name):
    assert name in BACKBONE_REGISTRY
    model = build_backbone(_cfg(name), ShapeSpec(channels=64, stride=1))
    assert model.size_divisibility == 8


def test_bev_norm_names():
    assert get_bev_norm("") == ""
    assert get_bev_norm("GN") == "GN"
    bn = get_bev_norm("BN", 1e-3, 0.01)(8)
    assert type(bn) is nn.BatchNorm2d and bn.eps == 1e-3 and bn.momentum == 0.01
    with pytest.raises(ValueError, match="unknown norm"):
        get_bev_norm("LN")
