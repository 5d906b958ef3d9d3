"""Reference parity: mmdetection3d's checkpoints, converted, give its outputs to float precision.

For each of the nine seed configs (and the two 0.x "legacy" fixtures) the reference state dict is
rebuilt by the fixture's rule, saved as an mmdetection3d checkpoint, converted with
``tools/convert_mmdet3d.py`` and run with ``PillarsPredictor.predict_points`` on the fixture's
cloud; every recorded output of mmdetection3d 1.4.0 is compared (see mmdet3d_parity.py).
"""

import pytest

from mmdet3d_parity import FIXTURE_CONFIGS, LEGACY_FIXTURES, measure_parity

REL = 1e-4  # pillar features, head outputs, losses: relative to the reference's scale


@pytest.mark.parametrize("name", list(FIXTURE_CONFIGS) + list(LEGACY_FIXTURES))
def test_converted_reference_checkpoint_reproduces_reference_outputs(name, tmp_path):
    r = measure_parity(name, str(tmp_path))
    assert r["voxels_equal"], "voxels differ from mmcv's hard voxelization"
    assert r["vfe_rel"] <= REL and r["vfe_sum_rel"] <= REL
    assert r["neck_stats_rel"] <= REL
    assert r["head_rel"] <= REL
    p = r["predictions"]
    assert "count" not in p, f"prediction count (ours, reference) = {p.get('count')}"
    assert p["unmatched"] == 0
    assert p["centre"] <= 1e-3 and p["size"] <= 1e-3 and p["yaw"] <= 1e-3
    assert p["velocity"] <= 1e-3
    assert p["score"] <= 1e-4
    if name not in LEGACY_FIXTURES:
        for key, rel in r["losses_rel"].items():
            assert rel <= REL, f"{key} differs by {rel:.2e} (relative)"
