"""Mixed-precision inference (``MODEL.INFERENCE_DTYPE``): the seed RegNetX-400MF-FPN config under
CPU bfloat16 autocast gives the float32 detections to a stated tolerance, the pillar net and the
canvas take the autocast dtype, and boxes and scores leave the model in float32.

bfloat16 tolerance: box parameters 0.05 (m, rad, m/s), scores 5e-3, and up to 10 % of the
boxes may differ where the NMS or the 100-box limit picked the other of two near-tied boxes (an
untrained model's scores are all ~0.5: measured 4 of 100 such picks, matched boxes within 0.01 m
and 1e-3 in score). The seed config runs on a +-6 m grid (48 x 48 of its 0.25 m pillars) and the
fixture cloud of tests/fixtures/parity, with random weights; on a CPU without native bf16
instructions (AVX2 only) bfloat16 is emulated and 10-40x slower than float32.
"""

import numpy as np
import os
import pytest
import torch

from d2_pillars.engine import PillarsPredictor, load_config
from d2_pillars.modeling.pillar_encoder import PillarFeatureNet

from detections import assert_same_detections, no_suppression

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = os.path.join(REPO, "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml")
SEED_SMALL = [
    "INPUT.POINT_CLOUD_RANGE", "[-6.0, -6.0, -5.0, 6.0, 6.0, 3.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-6.0, -6.0, -1.8, 6.0, 6.0, -1.8]]",
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.ANCHOR3D_HEAD.NMS_PRE", "200",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "100",
]  # fmt: skip


@pytest.fixture(scope="module")
def points():
    with np.load(os.path.join(REPO, "tests/fixtures/parity/points_nus.npz")) as f:
        return f["points"]


def _predictor(dtype, seed=3):
    cfg = load_config(SEED, SEED_SMALL + ["MODEL.INFERENCE_DTYPE", dtype])
    torch.manual_seed(seed)
    predictor = PillarsPredictor(cfg)
    head = predictor.model.head
    with torch.no_grad():
        head.conv_cls.bias.zero_()  # scores ~0.5: a full NMS load
        # an untrained model's two direction logits are near ties, which a rounding flips
        # (yaw + pi); a decisive bias keeps the comparison about boxes and scores
        head.conv_dir.bias.copy_(torch.tensor([4.0, -4.0]).repeat(head.conv_dir.bias.numel() // 2))
    return predictor


def test_bfloat16_inference_matches_float32(points):
    fp32, bf16 = _predictor("float32"), _predictor("bfloat16")
    a = fp32.predict_points(points)["instances"]
    b = bf16.predict_points(points)["instances"]
    assert b.scores.dtype == b.pred_boxes3d.tensor.dtype == torch.float32
    assert len(a) == len(b) == 100

    def pool(p):
        with no_suppression(p.model.head):
            return p.predict_points(points)["instances"]

    assert_same_detections(
        a,
        b,
        atol=0.05,
        score_atol=5e-3,
        tie_atol=5e-3,
        nms_thresh=fp32.model.head.nms_thresh,
        max_detections=100,
        candidates_a=lambda: pool(fp32),
        candidates_b=lambda: pool(bf16),
        max_unmatched_fraction=0.1,
    )


def test_inference_dtype_is_validated():
    cfg = load_config(SEED, SEED_SMALL + ["MODEL.INFERENCE_DTYPE", "half"])
    with pytest.raises(ValueError, match="MODEL.INFERENCE_DTYPE"):
        PillarsPredictor(cfg)


@pytest.mark.parametrize("padded_slots", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval_blocked", "eval_one_pass"])
def test_pillar_net_returns_the_autocast_dtype(padded_slots, mode, monkeypatch):
    """Under autocast the pillar features (hence the BEV canvas) are bfloat16 in every path,
    also with padded slots (whose BN statistics are float32)."""
    torch.manual_seed(0)
    net = PillarFeatureNet(
        in_channels=4,
        feat_channels=[16, 16],
        voxel_size=[1.0, 1.0, 8.0],
        point_cloud_range=[-8.0, -8.0, -5.0, 8.0, 8.0, 3.0],
        padded_slots=padded_slots,
    )
    voxels = torch.randn(30, 8, 4)
    num_points = torch.randint(1, 9, (30,))
    coords = torch.stack(
        [torch.zeros(30), torch.zeros(30), torch.arange(30) // 16, torch.arange(30) % 16], 1
    ).int()
    if mode == "eval_one_pass":
        monkeypatch.setattr(PillarFeatureNet, "blocked_inference_devices", ())
    net.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(voxels, num_points, coords)
    assert out.dtype == torch.bfloat16 and out.shape == (30, 16)
    net.eval()
    with torch.no_grad():
        ref = net(voxels, num_points, coords)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(voxels, num_points, coords)
    assert torch.allclose(low.float(), ref, rtol=0.05, atol=0.05)


def test_eval_one_pass_equals_blocks(monkeypatch):
    """The one-pass eval forward (what CUDA runs) equals the CPU's 8192-point blocks."""
    torch.manual_seed(0)
    for padded_slots in (True, False):
        net = PillarFeatureNet(
            in_channels=4,
            feat_channels=[32, 32],
            voxel_size=[1.0, 1.0, 8.0],
            point_cloud_range=[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0],
            padded_slots=padded_slots,
        ).eval()
        for norm in net.norms:  # non-trivial folded BN
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
        cells = torch.randperm(1024)[:900]
        coords = torch.stack([torch.zeros(900), torch.zeros(900), cells // 32, cells % 32], 1)
        voxels = torch.randn(900, 32, 4)
        num_points = torch.randint(1, 33, (900,))
        monkeypatch.setattr(PillarFeatureNet, "inference_chunk", 1000)  # several blocks
        with torch.no_grad():
            blocked = net(voxels, num_points, coords.int())
            monkeypatch.setattr(PillarFeatureNet, "blocked_inference_devices", ())
            one_pass = net(voxels, num_points, coords.int())
            monkeypatch.undo()
        assert torch.allclose(blocked, one_pass, rtol=1e-5, atol=1e-5)
