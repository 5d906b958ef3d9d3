"""PillarsPredictor: a dataset record and the same cloud through predict_points give the same
detections; bad clouds are clear errors."""

import numpy as np
import os
import pytest
import torch

from detectron2.data import DatasetCatalog

from d2_pillars.data.points import load_points
from d2_pillars.engine import PillarsPredictor, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")
SMALL = [
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[0.5, 0.5, 8.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
    "MODEL.ANCHOR3D_HEAD.PRIOR_PROB", "0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def predictor_and_record(register_small_synthetic, tmp_path_factory):
    register_small_synthetic(
        "nuscenes", tmp_path_factory.mktemp("nus"), "pred_nus_val", "pred_nus_train"
    )
    record = DatasetCatalog.get("pred_nus_val")[0]
    torch.manual_seed(0)
    cfg = load_config(CONFIG, SMALL + ["MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS", "True"])
    return PillarsPredictor(cfg), record, cfg


def test_predict_points_equals_the_record_pipeline(predictor_and_record):
    predictor, record, cfg = predictor_and_record
    from_record = predictor(record)["instances"]
    points = load_points(
        record,
        point_features=cfg.INPUT.POINT_FEATURES,
        load_dim=cfg.INPUT.LOAD_DIM,
        num_sweeps=cfg.INPUT.NUM_SWEEPS,
    )
    assert (np.abs(points[:, :2]) > 16).any()  # the test range filter has work to do
    from_points = predictor.predict_points(points)["instances"]
    assert len(from_record) > 0
    torch.testing.assert_close(from_points.pred_boxes3d.tensor, from_record.pred_boxes3d.tensor)
    torch.testing.assert_close(from_points.scores, from_record.scores)
    assert torch.equal(from_points.pred_classes, from_record.pred_classes)  # same arithmetic
    # a torch tensor is accepted too
    again = predictor.predict_points(torch.from_numpy(points))["instances"]
    torch.testing.assert_close(again.scores, from_record.scores)


def test_bad_clouds_are_clear_errors(predictor_and_record):
    predictor = predictor_and_record[0]
    with pytest.raises(ValueError, match=r"\(N, 4\).*time_lag"):
        predictor.predict_points(np.zeros((10, 5), np.float32))
    cloud = np.zeros((10, 4), np.float32)
    cloud[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 rows with NaN"):
        predictor.predict_points(cloud)


def test_empty_cloud_runs(predictor_and_record):
    """No point, no pillar: the all-zero pseudo-image still goes through the network."""
    predictor = predictor_and_record[0]
    out = predictor.predict_points(np.zeros((0, 4), np.float32))["instances"]
    assert len(out.pred_boxes3d) == out.scores.shape[0] == out.pred_classes.shape[0]
    assert out.pred_boxes3d.tensor.shape[1] == 9 and torch.isfinite(out.pred_boxes3d.tensor).all()
