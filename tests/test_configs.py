"""Every YAML config loads, builds its pillar net and backbone, and, with the meta-architecture,
the full model on CPU."""

import importlib
import importlib.util
from pathlib import Path
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.backbone import REGNETX_PRESETS
from d2_pillars.modeling.pillar_encoder import build_pillar_encoder
from d2_pillars.modeling.pillar_scatter import PillarScatter, grid_size_from_range

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("Base-"))
NAMES = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]

EXPECTED = [
    "lyft/pointpillars_fpn.yaml",
    "lyft/pointpillars_regnetx_400mf_fpn.yaml",
    "lyft/pointpillars_regnetx_400mf_secfpn.yaml",
    "lyft/pointpillars_secfpn.yaml",
    "nuscenes/pointpillars_fpn.yaml",
    "nuscenes/pointpillars_regnetx_1.6gf_fpn.yaml",
    "nuscenes/pointpillars_regnetx_400mf_fpn.yaml",
    "nuscenes/pointpillars_regnetx_400mf_secfpn.yaml",
    "nuscenes/pointpillars_secfpn.yaml",
    "synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml",
    "synthetic/pointpillars_secfpn_cpu.yaml",
]


def load(path):
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _has_meta_arch():
    return importlib.util.find_spec("d2_pillars.modeling.meta_arch") is not None


def test_all_seed_configs_exist():
    assert NAMES == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_is_consistent(path):
    cfg = load(path)
    head = cfg.MODEL.ANCHOR3D_HEAD
    dataset = path.parent.name
    assert cfg.MODEL.META_ARCHITECTURE == "PointPillars"
    assert head.NUM_CLASSES == len(cfg.DATASETS.CLASS_NAMES)
    assert len(head.CODE_WEIGHTS) == head.BOX_CODE_SIZE
    assert head.BOX_CODE_SIZE == (7 if dataset == "lyft" else 9)
    assert head.NUM_CLASSES == (9 if dataset == "lyft" else 10)
    assert len(head.LEVEL_SCALES) == len(head.IN_FEATURES)
    assert len(head.ANCHOR_RANGES) in (1, len(head.ANCHOR_SIZES))
    assert all(len(r) == 6 and len(s) == 3 for r, s in zip(head.ANCHOR_RANGES, head.ANCHOR_SIZES))
    assert head.ANCHOR_ROTATIONS == [0.0, 1.57] and head.DIR_OFFSET == -0.7854
    assert cfg.INPUT.POINT_FEATURES == ["x", "y", "z", "time_lag"]
    assert cfg.MODEL.BN_EPS == 1e-3
    # The reference's BN momentum; the short CPU demo schedule uses detectron2's 0.1 (see config).
    demo = path.name == "pointpillars_regnetx_400mf_fpn_cpu.yaml"
    assert cfg.MODEL.BN_MOMENTUM == (0.1 if demo else 0.01)
    assert list(cfg.SOLVER.STEPS) == sorted(cfg.SOLVER.STEPS)
    assert cfg.SOLVER.STEPS[-1] < cfg.SOLVER.MAX_ITER
    if dataset != "synthetic":
        # 2x schedule: 24 epochs, lr steps after epochs 20 and 23, one checkpoint per epoch
        epoch = cfg.SOLVER.CHECKPOINT_PERIOD
        assert cfg.SOLVER.MAX_ITER == 24 * epoch
        assert list(cfg.SOLVER.STEPS) == [20 * epoch, 23 * epoch]
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (
            (16 if dataset == "lyft" else 32),
            1e-3,
        )
        assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 35.0
    if "regnet" in cfg.MODEL.BACKBONE.NAME:
        r = cfg.MODEL.REGNET
        generator = {
            "depth": r.DEPTH,
            "w0": r.W0,
            "wa": r.WA,
            "wm": r.WM,
            "group_width": r.GROUP_WIDTH,
        }
        presets = [
            {k: p[k] for k in ("depth", "w0", "wa", "wm", "group_width")}
            for p in REGNETX_PRESETS.values()
        ]
        assert generator in presets
        assert list(r.STRIDES) == [1, 2, 2, 2]


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_builds_pillar_net_and_backbone(path):
    cfg = load(path)
    pfn = build_pillar_encoder(cfg)
    scatter = PillarScatter(cfg)
    backbone = build_backbone(cfg, ShapeSpec(channels=pfn.out_channels, stride=1))
    shapes = backbone.output_shape()
    head = cfg.MODEL.ANCHOR3D_HEAD
    assert set(head.IN_FEATURES) <= set(shapes)
    nx, ny, nz = grid_size_from_range(cfg.INPUT.POINT_CLOUD_RANGE, cfg.INPUT.VOXEL_SIZE)
    assert nz == 1 and scatter.grid_size == (nx, ny)
    assert nx % backbone.size_divisibility == 0 and ny % backbone.size_divisibility == 0
    if head.IN_FEATURES == ["secfpn"]:
        assert shapes["secfpn"].stride == 2
        assert shapes["secfpn"].channels == sum(cfg.MODEL.SECFPN.OUT_CHANNELS)
    else:
        assert [(shapes[f].stride, shapes[f].channels) for f in head.IN_FEATURES] == [
            (s, cfg.MODEL.FPN.OUT_CHANNELS) for s in (2, 4, 8)
        ]

    # a few pillars through the pillar net and scatter
    g = torch.Generator().manual_seed(0)
    num = 6
    cells = torch.randperm(nx * ny, generator=g)[:num]
    coords = torch.stack(
        [torch.zeros_like(cells), torch.zeros_like(cells), cells // nx, cells % nx]
    )
    voxels = torch.rand(num, cfg.INPUT.MAX_POINTS_PER_VOXEL, 4, generator=g)
    num_points = torch.randint(1, 5, (num,), generator=g)
    canvas = scatter(pfn(voxels, num_points, coords.T), coords.T, 1)
    assert canvas.shape == (1, pfn.out_channels, ny, nx)
    if path.parent.name == "synthetic":  # CPU-sized: run the backbone on the full grid
        backbone.eval()
        with torch.no_grad():
            out = backbone(canvas)
        for f in head.IN_FEATURES:
            s = shapes[f].stride
            assert out[f].shape == (1, shapes[f].channels, ny // s, nx // s)


@pytest.mark.skipif(not _has_meta_arch(), reason="d2_pillars.modeling.meta_arch not written yet")
@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_config_builds_full_model(path):
    from detectron2.modeling import build_model

    importlib.import_module("d2_pillars.modeling.meta_arch")  # registers PointPillars
    cfg = load(path)
    model = build_model(cfg)
    assert type(model).__name__ == "PointPillars"
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_imagenet_initialisation_and_padded_slots_of_the_seed_configs(path):
    """The RegNet seed configs start from pycls's ImageNet RegNetX of their own architecture (as
    the reference); every seed config uses the reference-exact pillar net; the CPU demo configs
    train offline from scratch."""
    cfg = load(path)
    seed = not path.parent.name == "synthetic"
    assert cfg.MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS == seed
    if not seed or "regnet" not in path.name:
        assert cfg.MODEL.WEIGHTS == ""
        return
    arch = "1.6GF" if "1.6gf" in path.name else "400MF"
    assert cfg.MODEL.WEIGHTS.startswith("https://dl.fbaipublicfiles.com/pycls/dds_baselines/")
    assert cfg.MODEL.WEIGHTS.endswith(f"/RegNetX-{arch}_dds_8gpu.pyth")
    preset = REGNETX_PRESETS[arch]
    assert (cfg.MODEL.REGNET.DEPTH, cfg.MODEL.REGNET.W0) == (preset["depth"], preset["w0"])


def test_unreachable_weights_url_names_the_url_and_the_way_out():
    from d2_pillars.checkpoint.checkpointer import CheckpointDownloadError, PillarsCheckpointer

    url = "http://127.0.0.1:9/RegNetX-400MF_dds_8gpu.pyth"  # closed local port: refused at once
    with pytest.raises(CheckpointDownloadError, match='(?s)127.0.0.1:9.*MODEL.WEIGHTS ""'):
        PillarsCheckpointer(torch.nn.Linear(2, 2)).load(url)
