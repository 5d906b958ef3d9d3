"""Fixtures shared by the checkpoint tests: configs and PointPillars models on a RegNetX preset,
ImageNet RegNet files in their native formats, and a pickle that would run code."""

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.backbone import REGNETX_PRESETS

from regnet_reference import save_native_sources


@pytest.fixture(scope="session")
def regnetx_cfg():
    """``make(arch) -> cfg``: the d2_pillars defaults on the CPU with ``MODEL.REGNET``'s generator
    parameters (DEPTH, W0, WA, WM, GROUP_WIDTH) of the pycls RegNetX preset ``arch`` ("400MF",
    "1.6GF", "3.2GF"); the stem width (64), strides and BN eps stay the package defaults."""

    def make(arch):
        cfg = get_cfg()
        add_pillars_config(cfg)
        p = REGNETX_PRESETS[arch]
        r = cfg.MODEL.REGNET
        r.DEPTH, r.W0, r.WA, r.WM = p["depth"], p["w0"], p["wa"], p["wm"]
        r.GROUP_WIDTH = p["group_width"]
        cfg.MODEL.DEVICE = "cpu"
        return cfg

    return make


@pytest.fixture(scope="session")
def regnet_pointpillars(regnetx_cfg):
    """``make(arch, backbone_name="build_regnet_fpn_backbone") -> (cfg, model)``: PointPillars on
    the RegNetX preset ``arch`` (outputs s2-s4) with the FPN or, for
    "build_regnet_secfpn_backbone", the SECFPN neck."""

    def make(arch, backbone_name="build_regnet_fpn_backbone"):
        cfg = regnetx_cfg(arch)
        cfg.MODEL.META_ARCHITECTURE = "PointPillars"
        cfg.MODEL.BACKBONE.NAME = backbone_name
        if backbone_name == "build_regnet_secfpn_backbone":
            cfg.MODEL.SECFPN.IN_FEATURES = ["s2", "s3", "s4"]
            cfg.MODEL.ANCHOR3D_HEAD.IN_FEATURES = ["secfpn"]
            cfg.MODEL.ANCHOR3D_HEAD.LEVEL_SCALES = [1.0]
        return cfg, build_model(cfg)

    return make


class _CreatesFileWhenUnpickled:
    """Unpickling this object calls ``open(path, "w")``: a stand-in for a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def code_running_pickle(tmp_path):
    """``(obj, marker)``: ``obj`` creates the file ``marker`` when unpickled (saving does not), so
    ``marker.exists()`` tells whether a loader ran pickled code."""
    marker = tmp_path / "pickled_code_ran"
    return _CreatesFileWhenUnpickled(marker), marker


@pytest.fixture(scope="session")
def regnet_sources(tmp_path_factory, pycls_regnetx):
    """{(format, arch): (model, path)}: pycls ``.pyth`` files ({"model_state", "epoch"}) and
    torchvision state dicts of RegNetX-400MF and -1.6GF with random weights."""
    return save_native_sources(tmp_path_factory.mktemp("regnet_sources"), pycls_regnetx)
