"""Reading RegNet checkpoints: pycls and torchvision files (random weights, built locally) in their
native formats, format detection, torchvision -> pycls names, and the errors."""

import pytest
import torch
import torchvision

from d2_pillars.checkpoint.regnet_source import (
    RegNetCheckpointError,
    read_source_state_dict,
    source_state_dict,
    torchvision_to_pycls_names,
)
from d2_pillars.checkpoint.regnet_stages import describe_stages


@pytest.mark.parametrize("arch", ["400MF", "1.6GF"])
def test_torchvision_names_map_onto_pycls_names(regnet_sources, arch):
    """Independent reference: torchvision's and pycls's modules of the same network (1.6GF has
    equal widths in both) must give the same names and shapes after renaming."""
    tv = regnet_sources[("torchvision", arch)][0].state_dict()
    pc = regnet_sources[("pycls", arch)][0].state_dict()
    renamed = torchvision_to_pycls_names(tv)
    assert len(renamed) == len(tv)
    assert set(renamed) == set(pc)
    if arch == "1.6GF":
        assert {k: tuple(v.shape) for k, v in renamed.items()} == {
            k: tuple(v.shape) for k, v in pc.items()
        }
    for k, v in tv.items():  # values travel with their keys
        if k.endswith("f.b.0.weight"):
            stage, block = k.split(".")[1:3]
            j = int(block.split("-")[1]) + 1
            assert renamed[f"s{stage[5:]}.b{j}.f.b.weight"] is v


def test_torchvision_regnety_squeeze_excitation_names():
    tv = torchvision.models.regnet_y_400mf(weights=None).state_dict()
    renamed = torchvision_to_pycls_names(tv)
    assert "s1.b1.f.se.f_ex.0.weight" in renamed and "s1.b1.f.se.f_ex.2.bias" in renamed
    assert describe_stages(renamed)[0].se


def test_format_detection_and_errors(regnet_sources, tmp_path):
    pyth = regnet_sources[("pycls", "400MF")][1]
    tv = regnet_sources[("torchvision", "400MF")][1]
    assert read_source_state_dict(pyth)[1] == "pycls"
    assert read_source_state_dict(tv)[1] == "torchvision"
    with pytest.raises(RegNetCheckpointError, match="--format pycls"):
        read_source_state_dict(pyth, "torchvision")
    # DDP-wrapped torchvision state dict
    state = torch.load(tv, weights_only=True)
    wrapped = {"module." + k: v for k, v in state.items()}
    assert source_state_dict(wrapped)[1] == "torchvision"
    # not a RegNet
    other = str(tmp_path / "resnet.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(RegNetCheckpointError, match="neither a pycls"):
        read_source_state_dict(other)
    with pytest.raises(FileNotFoundError, match="nothing.pyth"):
        read_source_state_dict(str(tmp_path / "nothing.pyth"))
    bad = {"model_state": {"s1.b1.f.dwise.weight": torch.zeros(1)}}
    with pytest.raises(RegNetCheckpointError, match="not RegNet"):
        source_state_dict(bad)


def test_refuses_pickled_objects(tmp_path, code_running_pickle):
    """weights_only loading: a pickle that would run code is refused, and the code never runs."""
    evil, marker = code_running_pickle
    path = str(tmp_path / "evil.pyth")
    torch.save({"model_state": {"s1.b1.f.a.weight": torch.zeros(1)}, "x": evil}, path)
    assert not marker.exists()  # saving does not call it
    with pytest.raises(RegNetCheckpointError, match="weights_only"):
        read_source_state_dict(path)
    assert not marker.exists()
