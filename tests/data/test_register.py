"""Dataset catalog: default names, lazy loading, metadata, clear errors."""

import numpy as np
import os
import pickle
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

import d2_pillars.data  # noqa: F401  (registers the default names)
from d2_pillars.data import InfoFileError, register_lyft, register_nuscenes
from d2_pillars.data.datasets import (
    DEFAULT_DATASETS,
    LYFT_SPEC,
    create_infos,
    default_datasets_root,
    save_infos,
)

LYFT_ROOT = os.path.join(os.environ.get("D2_PILLARS_SAMPLES", "/work/shared/data/samples"), "lyft")


def test_default_names_and_metadata():
    expected = {
        "nuscenes_train": ("v1.0-trainval", "train", "nuscenes"),
        "nuscenes_val": ("v1.0-trainval", "val", "nuscenes"),
        "nuscenes_test": ("v1.0-test", "test", "nuscenes"),
        "nuscenes_mini_train": ("v1.0-mini", "mini_train", "nuscenes"),
        "nuscenes_mini_val": ("v1.0-mini", "mini_val", "nuscenes"),
        "lyft_train": ("v1.01-train", "train", "lyft"),
        "lyft_val": ("v1.01-train", "val", "lyft"),
        "lyft_test": ("v1.01-test", "test", "lyft"),
        "synthetic_nus_mini_train": ("v1.0-mini", "mini_train", "synthetic_nuscenes"),
        "synthetic_nus_mini_val": ("v1.0-mini", "mini_val", "synthetic_nuscenes"),
        "synthetic_lyft_train": ("v1.01-train", "train", "synthetic_lyft"),
        "synthetic_lyft_val": ("v1.01-train", "val", "synthetic_lyft"),
    }
    assert set(DEFAULT_DATASETS) == set(expected)
    root = d2_pillars.data.DATASETS_ROOT
    for name, (version, split, subdir) in expected.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        dataset = "lyft" if "lyft" in name else "nuscenes"
        assert meta.version == version and meta.eval_split == split
        assert meta.evaluator_type == dataset and meta.point_load_dim == 5
        assert meta.dataset_root == os.path.join(root, subdir)
        assert meta.info_path == os.path.join(root, subdir, f"{dataset}_infos_{split}.pkl")
        assert len(meta.thing_classes) == (9 if dataset == "lyft" else 10)


def test_missing_info_names_the_command(tmp_path):
    root = str(tmp_path / "synthetic_lyft")
    register_lyft(
        "test_missing_lyft_val",
        os.path.join(root, "lyft_infos_val.pkl"),
        root,
        scene_split="last20",
    )
    with pytest.raises(InfoFileError) as e:
        DatasetCatalog.get("test_missing_lyft_val")
    msg = str(e.value)
    assert "lyft_infos_val.pkl" in msg and "nor does the dataset root" in msg
    assert f"python tools/create_data.py lyft --root {root} --version v1.01-train" in msg
    assert "--scene-split last20" in msg
    os.makedirs(root)
    with pytest.raises(InfoFileError, match="Build it with"):
        DatasetCatalog.get("test_missing_lyft_val")
    register_nuscenes(
        "test_missing_nus_mini_val", str(tmp_path / "nuscenes_infos_mini_val.pkl"), str(tmp_path)
    )
    with pytest.raises(InfoFileError, match="--version v1.0-mini"):
        DatasetCatalog.get("test_missing_nus_mini_val")


def test_environment_variable_sets_the_root(monkeypatch, tmp_path):
    # The names registered at import use the root resolved then.
    assert d2_pillars.data.DATASETS_ROOT == default_datasets_root()
    monkeypatch.setenv("D2_PILLARS_DATASETS", str(tmp_path))
    assert default_datasets_root() == str(tmp_path)
    monkeypatch.setenv("D2_PILLARS_DATASETS", "~/data")
    assert default_datasets_root() == os.path.expanduser("~/data")
    monkeypatch.delenv("D2_PILLARS_DATASETS")
    assert default_datasets_root() == "datasets"


@pytest.mark.skipif(not os.path.isdir(LYFT_ROOT), reason="Lyft sample not available")
def test_register_lyft_sample_lazily(tmp_path):
    name = "test_lyft_sample_val"
    info = str(tmp_path / "lyft_infos_val.pkl")
    register_lyft(name, info, LYFT_ROOT)  # the file does not exist yet: registration is lazy
    meta = MetadataCatalog.get(name)
    assert meta.version == "v1.01-train" and meta.eval_split == "val"
    assert meta.evaluator_type == "lyft" and meta.info_path == info
    assert meta.thing_classes == list(LYFT_SPEC.classes)
    create_infos(LYFT_SPEC, LYFT_ROOT, "v1.01-train", out_dir=str(tmp_path), progress=False)
    (d,) = DatasetCatalog.get(name)
    assert d["lidar_path"] == os.path.join(
        LYFT_ROOT, "v1.01-train/lidar/host-a101_lidar1_1240710385903083166.bin"
    )
    assert d["dataset"] == "lyft" and d["gt_boxes"].shape == (4, 7)
    # A file of another split under this name is refused.
    register_lyft(
        "test_lyft_wrong_split", str(tmp_path / "lyft_infos_train.pkl"), LYFT_ROOT, eval_split="val"
    )
    with pytest.raises(InfoFileError, match="split 'train', expected 'val'|holds split"):
        DatasetCatalog.get("test_lyft_wrong_split")


def test_register_nuscenes_infers_version_and_split(tmp_path):
    path = str(tmp_path / "nuscenes_infos_mini_val.pkl")
    rec = {
        "dataset": "nuscenes",
        "sample_token": "s",
        "lidar_path": "samples/LIDAR_TOP/a.bin",
        "sweeps": [
            {"lidar_path": "sweeps/LIDAR_TOP/b.bin", "timestamp": 0.5, "sweep2lidar": np.eye(4)}
        ],
        "timestamp": 1.0,
    }
    save_infos(
        path,
        [rec],
        {
            "dataset": "nuscenes",
            "version": "v1.0-mini",
            "split": "mini_val",
            "classes": list(d2_pillars.data.datasets.NUSCENES_CLASSES),
        },
    )
    register_nuscenes("test_nus_tiny_mini_val", path, str(tmp_path))
    meta = MetadataCatalog.get("test_nus_tiny_mini_val")
    assert meta.version == "v1.0-mini" and meta.eval_split == "mini_val"
    (d,) = DatasetCatalog.get("test_nus_tiny_mini_val")
    assert d["lidar_path"] == os.path.join(str(tmp_path), "samples/LIDAR_TOP/a.bin")
    assert d["sweeps"][0]["lidar_path"] == os.path.join(str(tmp_path), "sweeps/LIDAR_TOP/b.bin")
    with pytest.raises(ValueError, match="Cannot infer the split"):
        register_nuscenes("test_nus_bad_name", str(tmp_path / "infos.pkl"), str(tmp_path))


def test_convention_mismatch_names_the_dataset_command(tmp_path):
    path = str(tmp_path / "nuscenes_infos_val.pkl")
    meta = {
        "dataset": "nuscenes",
        "version": "v1.0-trainval",
        "split": "val",
        "box_convention_version": 0,
        "info_format_version": 1,
    }
    with open(path, "wb") as f:
        pickle.dump({"metadata": meta, "infos": []}, f)
    register_nuscenes("test_nus_old_convention_val", path, str(tmp_path))
    with pytest.raises(InfoFileError) as e:
        DatasetCatalog.get("test_nus_old_convention_val")
    msg = str(e.value)
    assert path in msg and "convention version 0" in msg
    assert f"python tools/create_data.py nuscenes --root {tmp_path} --version v1.0-trainval" in msg
