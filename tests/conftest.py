"""Fixtures shared by the test packages."""

import contextlib
import logging
import pytest
import torch

from detectron2.data import DatasetCatalog

from d2_pillars.data import register_lyft, register_nuscenes
from d2_pillars.data.datasets import LYFT_SPEC, NUSCENES_SPEC, create_infos
from d2_pillars.modeling.backbone import REGNETX_PRESETS
from d2_pillars.synthetic import make_synthetic_lyft, make_synthetic_nuscenes


def pytest_collection_modifyitems(config, items):
    """Skip the ``cuda``-marked tests (setup.cfg) where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# fmt -> (generator, info spec, version, (val split, train split), scene split, register)
_FORMATS = {
    "nuscenes": (
        make_synthetic_nuscenes, NUSCENES_SPEC, "v1.0-mini", ("mini_val", "mini_train"),
        "official", register_nuscenes,
    ),
    "lyft": (
        make_synthetic_lyft, LYFT_SPEC, "v1.01-train", ("val", "train"), "last20", register_lyft,
    ),
}  # fmt: skip


@pytest.fixture(scope="session")
def register_small_synthetic():
    """``make(fmt, out_dir, val_name, train_name, **generator_kwargs) -> root``: a small synthetic
    nuScenes / Lyft set (low-resolution LiDAR by default) with its infos (no sweeps), its val and
    train splits registered under the given names."""

    def make(fmt, out_dir, val_name, train_name, **kwargs):
        generate, spec, version, splits, scene_split, register = _FORMATS[fmt]
        kwargs = dict(dict(num_scenes=2, seed=0, num_beams=8), **kwargs)
        root = generate(str(out_dir), **kwargs)
        paths = create_infos(
            spec, root, version, max_sweeps=0, scene_split=scene_split, progress=False
        )
        for name, split in zip((val_name, train_name), splits):
            if name not in DatasetCatalog.list():
                extra = {"scene_split": scene_split} if fmt == "lyft" else {}
                register(name, paths[split], root, **extra)
        return root

    return make


@pytest.fixture(scope="session")
def pycls_regnetx():
    """``with pycls_regnetx(arch) as RegNet:`` inside the block pycls 0.1.1's global config holds
    the ImageNet RegNetX preset ``arch`` ("400MF", "1.6GF", "3.2GF"; 1000 classes), so
    ``RegNet()`` builds it and ``RegNet.get_args()`` gives its stage widths / depths; the config
    is reset on leaving (pycls builds models from that global)."""

    @contextlib.contextmanager
    def configured(arch):
        from pycls.core.config import cfg, reset_cfg
        from pycls.models.regnet import RegNet

        p = REGNETX_PRESETS[arch]
        reset_cfg()
        try:
            cfg.MODEL.NUM_CLASSES = 1000
            cfg.REGNET.DEPTH, cfg.REGNET.W0 = p["depth"], p["w0"]
            cfg.REGNET.WA, cfg.REGNET.WM, cfg.REGNET.GROUP_W = p["wa"], p["wm"], p["group_width"]
            yield RegNet
        finally:
            reset_cfg()

    return configured


@pytest.fixture(scope="session")
def capture_logs():
    """``with capture_logs(logger, level=logging.DEBUG) as records:`` the ``LogRecord``s at
    ``level`` or above that ``logger`` (a ``Logger`` or its name) handles inside the block,
    whatever other tests did to propagation (detectron2's ``setup_logger`` turns it off for the
    package logger); the logger's level is restored on leaving."""

    @contextlib.contextmanager
    def capture(logger, level=logging.DEBUG):
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        records = []
        handler = logging.Handler(level)
        handler.emit = records.append
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(level)
        try:
            yield records
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)

    return capture


@pytest.fixture(scope="session")
def tiny_demo_opts():
    """``make(train_name, val_name, max_iter) -> [KEY, VALUE, ...]``: the demo config shrunk to
    a +-16 m grid of 1 m pillars, one sweep, a 16-channel FPN and ``max_iter`` iterations, on
    the named splits (every box kept at test time, at most 20 per sample)."""

    def make(train_name, val_name, max_iter=4):
        return [
            "DATASETS.TRAIN", f'("{train_name}",)',
            "DATASETS.TEST", f'("{val_name}",)',
            "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
            "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
            "INPUT.NUM_SWEEPS", "1",
            "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
            "MODEL.FPN.OUT_CHANNELS", "16",
            "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.STEPS", f"({max_iter - 1},)",
            "SOLVER.LOG_PERIOD", "1",
            "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
            "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "20",
        ]  # fmt: skip

    return make
