"""RegNet stages read off parameter shapes, against the pycls presets; the RegNet's place in a
model."""

import pytest

from d2_pillars.checkpoint.regnet_source import RegNetCheckpointError, read_source_state_dict
from d2_pillars.checkpoint.regnet_stages import describe_stages, find_regnet_prefix
from d2_pillars.modeling.backbone import REGNETX_PRESETS


@pytest.mark.parametrize("arch", ["400MF", "1.6GF"])
def test_describe_stages_matches_presets(regnet_sources, arch):
    p = REGNETX_PRESETS[arch]
    for fmt in ("pycls", "torchvision"):
        stages = describe_stages(read_source_state_dict(regnet_sources[(fmt, arch)][1])[0])
        if (fmt, arch) == ("torchvision", "400MF"):
            assert [s.width for s in stages] == [32, 64, 160, 400]  # torchvision's rounding
            continue
        assert [s.depth for s in stages] == p["depths"]
        assert [s.width for s in stages] == p["widths"]
        assert [s.groups for s in stages] == p["groups"]


def test_find_regnet_prefix():
    keys = ["backbone.bottom_up.s1.b1.f.a.weight", "backbone.fpn_lateral2.weight"]
    assert find_regnet_prefix(keys) == "backbone.bottom_up."
    assert find_regnet_prefix(["s1.b1.f.a.weight"]) == ""
    with pytest.raises(RegNetCheckpointError, match="no RegNet"):
        find_regnet_prefix(["backbone.s1.0.weight", "xs1.b1.f.a.weight"])
    with pytest.raises(RegNetCheckpointError, match="several"):
        find_regnet_prefix(["a.s1.b1.f.a.weight", "b.s1.b1.f.a.weight"])
