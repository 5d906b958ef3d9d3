"""tools/convert_mmdet3d.py and d2_pillars.checkpoint.mmdet3d_converter: conventions, errors,
reading, and loading the result (the outputs themselves: test_mmdet3d_parity.py)."""

import math
import numpy as np
import os
import sys
from collections import OrderedDict
import pytest
import torch

from d2_pillars.checkpoint import PillarsCheckpointer
from d2_pillars.checkpoint.mmdet3d_converter import (
    MMDet3DCheckpointError,
    read_mmdet3d_checkpoint,
    resolve_convention,
)
from d2_pillars.engine import build_pillars_model, load_config

from mmdet3d_parity import FIXTURE_CONFIGS, REPO, load_fixture, reference_state_dict

sys.path.insert(0, os.path.join(REPO, "tools"))
import convert_mmdet3d  # noqa: E402

sys.path.pop(0)

CFG = os.path.join(REPO, FIXTURE_CONFIGS["lyft_fpn"])


@pytest.fixture(scope="module")
def lyft_fpn_state():
    _, meta, _ = load_fixture("lyft_fpn")
    return reference_state_dict(meta)


def _save(path, state, version="1.4.0", **extra):
    torch.save({"meta": {"mmdet3d_version": version}, "state_dict": state, **extra}, path)
    return str(path)


def test_rule_reproduces_the_fixture_checksums():
    _, meta, _ = load_fixture("nus_400mf_fpn")
    state = reference_state_dict(meta)
    for key, (total, first) in meta["state_dict_checks"].items():
        t = state[key]
        assert math.isclose(float(t.double().sum()), total, rel_tol=1e-6, abs_tol=1e-6), key
        assert float(t.flatten()[0]) == pytest.approx(first, abs=1e-7) if t.numel() else True


@pytest.mark.parametrize(
    "version,expected",
    [("0.1.0", "0.x"), ("0.18.1", "0.x"), ("1.0.0rc0", "1.x"), ("1.4.0", "1.x"), ("v1.0.0", "1.x")],
)
def test_auto_convention_from_version(version, expected):
    assert resolve_convention("auto", {"mmdet3d_version": version}) == expected
    assert resolve_convention("0.x", {"mmdet3d_version": version}) == "0.x"


def test_auto_convention_needs_a_version():
    with pytest.raises(MMDet3DCheckpointError, match="--source-convention"):
        resolve_convention("auto", {}, "x.pth")


def test_converted_checkpoint_loads_with_no_missing_or_unexpected_key(
    lyft_fpn_state, tmp_path, capsys
):
    src = _save(tmp_path / "ref.pth", lyft_fpn_state, optimizer={"state": {}, "param_groups": []})
    dst = str(tmp_path / "d2.pth")
    assert convert_mmdet3d.main([src, dst, "--config-file", CFG]) == 0
    out = capsys.readouterr().out
    assert "0 dropped, 0 left at initialisation" in out and "pts_voxel_encoder" in out
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["source_convention"] == "1.x" and ckpt["box_convention_version"] == 1
    model = build_pillars_model(load_config(CFG, ["MODEL.DEVICE", "cpu"]))
    model.load_state_dict(ckpt["model"], strict=True)  # raises on any missing / unexpected key
    assert model.head.dir_offset == pytest.approx(-0.7854)
    assert torch.equal(
        model.pillar_encoder.linears[0].weight,
        lyft_fpn_state["pts_voxel_encoder.vfe_layers.0.linear.weight"],
    )


def test_legacy_conversion_stores_its_direction_offset(lyft_fpn_state, tmp_path):
    src = _save(tmp_path / "ref.pth", lyft_fpn_state, version="0.1.0")
    dst = str(tmp_path / "d2.pth")
    assert convert_mmdet3d.main([src, dst, "--config-file", CFG]) == 0
    model = build_pillars_model(load_config(CFG, ["MODEL.DEVICE", "cpu"]))
    PillarsCheckpointer(model).load(dst)
    assert model.head.dir_offset == pytest.approx(math.pi / 2 - 0.7854)
    # the package's rotation 0 takes the 0.x anchor 1.57: cls channels of anchor 0 <- anchor 1
    k = model.head.num_classes
    src_cls = lyft_fpn_state["pts_bbox_head.conv_cls.weight"]
    assert torch.equal(model.head.conv_cls.weight[:k], src_cls[k : 2 * k])


def test_mmdet3d_weights_convert_on_load(lyft_fpn_state, tmp_path):
    src = _save(tmp_path / "ref.pth", lyft_fpn_state)
    model = build_pillars_model(load_config(CFG, ["MODEL.DEVICE", "cpu"]))
    PillarsCheckpointer(model).load(src)
    assert torch.equal(model.head.conv_reg.bias, lyft_fpn_state["pts_bbox_head.conv_reg.bias"])


def test_unplaced_tensor_is_an_error_and_nothing_is_written(lyft_fpn_state, tmp_path, capsys):
    state = OrderedDict(lyft_fpn_state)
    state["pts_bbox_head.conv_extra.weight"] = torch.zeros(3)
    src = _save(tmp_path / "ref.pth", state)
    dst = tmp_path / "d2.pth"
    assert convert_mmdet3d.main([src, str(dst), "--config-file", CFG]) == 1
    err = capsys.readouterr().err
    assert "pts_bbox_head.conv_extra.weight" in err and "no place" in err
    assert not dst.exists() and not list(tmp_path.glob("d2.pth*"))


def test_shape_mismatch_names_key_and_config(lyft_fpn_state, tmp_path, capsys):
    src = _save(tmp_path / "ref.pth", lyft_fpn_state)
    nus = os.path.join(REPO, FIXTURE_CONFIGS["nus_fpn"])
    assert convert_mmdet3d.main([src, str(tmp_path / "d2.pth"), "--config-file", nus]) == 1
    err = capsys.readouterr().err
    assert "pointpillars_fpn.yaml" in err and "expects" in err


def test_missing_tensor_is_an_error(lyft_fpn_state, tmp_path, capsys):
    state = OrderedDict(lyft_fpn_state)
    del state["pts_neck.fpn_convs.2.bn.running_var"]
    src = _save(tmp_path / "ref.pth", state)
    assert convert_mmdet3d.main([src, str(tmp_path / "d2.pth"), "--config-file", CFG]) == 1
    assert "fpn_output3.norm.running_var" in capsys.readouterr().err


def test_not_an_mmdet3d_checkpoint(tmp_path, capsys):
    src = str(tmp_path / "other.pth")
    torch.save({"model": {"backbone.x": torch.zeros(1)}}, src)
    assert convert_mmdet3d.main([src, str(tmp_path / "d2.pth"), "--config-file", CFG]) == 1
    assert "not an mmdetection3d PointPillars checkpoint" in capsys.readouterr().err


class _HistoryBuffer:
    """Stands for mmengine's training-state objects pickled in 1.x checkpoints."""

    def __init__(self):
        self.values = np.zeros(3)


class _ConfigDict(dict):
    pass


def test_training_state_objects_are_read_inert(lyft_fpn_state, tmp_path, code_running_pickle):
    obj, marker = code_running_pickle
    hub = {"log_scalars": {"loss": _HistoryBuffer()}, "evil": obj}
    state = {"module." + k: v for k, v in lyft_fpn_state.items()}
    src = _save(tmp_path / "ref.pth", state, message_hub=hub)
    state, meta = read_mmdet3d_checkpoint(src)
    assert not marker.exists()
    assert meta["mmdet3d_version"] == "1.4.0"
    assert set(state) == set(lyft_fpn_state)  # DataParallel's "module." prefix removed


def test_unreadable_training_state_is_a_clear_error(lyft_fpn_state, tmp_path, code_running_pickle):
    obj, marker = code_running_pickle
    src = _save(tmp_path / "ref.pth", lyft_fpn_state, cfg=_ConfigDict(a=1), evil=obj)
    with pytest.raises(
        MMDet3DCheckpointError, match="(?s)weights_only=True.*keep just its weights"
    ):
        read_mmdet3d_checkpoint(src)
    assert not marker.exists()
