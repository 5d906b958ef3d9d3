"""Fixtures shared by the test packages."""

import pytest

from detectron2.data import DatasetCatalog

from d2_pillars.data import register_lyft, register_nuscenes
from d2_pillars.data.datasets import LYFT_SPEC, NUSCENES_SPEC, create_infos
from d2_pillars.data.datasets.synthetic import make_synthetic_lyft, make_synthetic_nuscenes

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
