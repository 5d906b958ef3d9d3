import math
import numpy as np
import pytest
import torch

from d2_pillars.modeling.box_coder import (
    ResidualBoxCoder,
    add_sin_difference,
    apply_direction,
    direction_targets,
    limit_period,
)


def _random_boxes(n, code_size, seed):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) * 100 - 50
    dims = torch.rand(n, 3, generator=g) * 5 + 0.2
    yaw = torch.rand(n, 1, generator=g) * 2 * math.pi - math.pi
    vel = torch.randn(n, 2, generator=g) * 5
    return torch.cat([xyz, dims, yaw, vel], 1)[:, :code_size]


@pytest.mark.parametrize("code_size", [7, 9])
def test_encode_decode_round_trip(code_size):
    boxes = _random_boxes(500, code_size, 0)
    anchors = _random_boxes(500, 7, 1)
    coder = ResidualBoxCoder(code_size)
    deltas = coder.encode(boxes, anchors)
    assert deltas.shape == (500, code_size)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-4)


def test_encode_matches_hand_computed_values():
    anchor = torch.tensor([[1.0, 2.0, -1.0, 4.0, 3.0, 2.0, 0.5]])
    box = torch.tensor([[6.0, -3.0, 0.0, 8.0, 1.5, 1.0, 2.0, 3.0, -4.0]])
    got = ResidualBoxCoder(9).encode(box, anchor)[0].numpy()
    # D = sqrt(4^2 + 3^2) = 5
    want = [1.0, -1.0, 0.5, math.log(2.0), math.log(0.5), math.log(0.5), 1.5, 3.0, -4.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_code_size_checks():
    with pytest.raises(ValueError):
        ResidualBoxCoder(8)
    with pytest.raises(ValueError, match="BOX_CODE_SIZE"):
        ResidualBoxCoder(9).encode(_random_boxes(3, 7, 0), _random_boxes(3, 7, 1))


def test_decode_keeps_dims_finite_for_huge_residuals():
    anchors = _random_boxes(4, 7, 0)
    deltas = torch.full((4, 7), 1e4)
    assert torch.isfinite(ResidualBoxCoder(7).decode(deltas, anchors)).all()


def test_limit_period():
    v = torch.tensor([-7.0, -math.pi, 0.0, 3.0, math.pi, 10.0])
    out = limit_period(v, 0.5, 2 * math.pi)
    assert ((out >= -math.pi) & (out < math.pi)).all()
    # Same angle modulo 2 pi.
    torch.testing.assert_close(torch.sin(out), torch.sin(v), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cos(out), torch.cos(v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dir_offset", [-0.7854, 0.0, 0.7854])
def test_direction_targets_brute_force(dir_offset):
    yaw = torch.linspace(-math.pi, math.pi, 997)[:-1]
    # Independent reference: bin 0 iff the heading is within [offset, offset + pi) mod 2 pi.
    rel = np.mod(yaw.double().numpy() - dir_offset, 2 * np.pi)
    # Leave out float32 rounding ties at the bin edges.
    away = np.minimum(np.abs(rel - np.pi), np.minimum(rel, 2 * np.pi - rel)) > 1e-4
    got = direction_targets(yaw, dir_offset).numpy()[away]
    want = (rel >= np.pi).astype(np.int64)[away]
    assert away.sum() > 990
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dir_offset", [-0.7854, 0.3])
def test_direction_fix_recovers_headings_in_all_quadrants(dir_offset):
    # Headings in all four quadrants (and near the axes); the regressed yaw is only known modulo
    # pi (sin-difference loss), so present it flipped by pi and shifted by multiples of 2 pi.
    yaw = torch.tensor([0.1, 0.8, 1.5, 1.7, 2.9, -3.0, -2.2, -1.6, -1.4, -0.5, 3.1, -0.05])
    target_bins = direction_targets(yaw, dir_offset)
    for shift in (0.0, math.pi, -math.pi, 3 * math.pi, -2 * math.pi):
        regressed = yaw + shift
        fixed = apply_direction(regressed, target_bins, dir_offset)
        assert ((fixed >= -math.pi) & (fixed < math.pi)).all()
        diff = limit_period(fixed - yaw, 0.5, 2 * math.pi)
        torch.testing.assert_close(diff, torch.zeros_like(diff), atol=1e-5, rtol=0)
    # The wrong bin yields the opposite heading.
    flipped = apply_direction(yaw, 1 - target_bins, dir_offset)
    diff = limit_period(flipped - yaw - math.pi, 0.5, 2 * math.pi)
    torch.testing.assert_close(diff, torch.zeros_like(diff), atol=1e-5, rtol=0)


def test_add_sin_difference():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(50, 9, generator=g) * 3
    target = torch.randn(50, 9, generator=g) * 3
    p2, t2 = add_sin_difference(pred, target)
    torch.testing.assert_close(p2[:, 6] - t2[:, 6], torch.sin(pred[:, 6] - target[:, 6]))
    # Other columns untouched, inputs unmodified.
    keep = [0, 1, 2, 3, 4, 5, 7, 8]
    torch.testing.assert_close(p2[:, keep], pred[:, keep])
    torch.testing.assert_close(t2[:, keep], target[:, keep])
    # Blind to a pi flip of the prediction.
    p3, t3 = add_sin_difference(pred + torch.tensor([0, 0, 0, 0, 0, 0, math.pi, 0, 0]), target)
    torch.testing.assert_close((p3 - t3).abs()[:, 6], (p2 - t2).abs()[:, 6], atol=1e-5, rtol=0)
