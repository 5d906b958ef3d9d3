import copy
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg

from d2_pillars.config import add_pillars_config
from d2_pillars.modeling.pillar_encoder import (
    PILLAR_ENCODER_REGISTRY,
    NaiveSyncBatchNorm1d,
    PillarFeatureNet,
    build_pillar_encoder,
    segment_max,
)
from d2_pillars.modeling.pillar_scatter import PillarScatter, grid_size_from_range

RANGE = [-4.0, -2.0, -5.0, 4.0, 2.0, 3.0]
VOXEL = [0.5, 0.5, 8.0]  # 16 x 8 grid


def _make_pillars(num_pillars=7, max_points=5, channels=4, batch_size=2, seed=0):
    """Random pillars with points inside their cells; padding slots hold garbage (NaN, 1e6)."""
    g = torch.Generator().manual_seed(seed)
    nx, ny, _ = grid_size_from_range(RANGE, VOXEL)
    cells = torch.randperm(nx * ny * batch_size, generator=g)[:num_pillars]
    b, yx = cells // (nx * ny), cells % (nx * ny)
    y, x = yx // nx, yx % nx
    coords = torch.stack([b, torch.zeros_like(b), y, x], dim=1).int()
    num_points = torch.randint(1, max_points + 1, (num_pillars,), generator=g).int()
    num_points[0] = max_points  # one full pillar
    num_points[1] = 1  # one single-point pillar
    u = torch.rand(num_pillars, max_points, channels, generator=g)
    voxels = u.clone()
    voxels[..., 0] = RANGE[0] + (x[:, None] + u[..., 0]) * VOXEL[0]
    voxels[..., 1] = RANGE[1] + (y[:, None] + u[..., 1]) * VOXEL[1]
    voxels[..., 2] = -2.0 + 2.0 * u[..., 2]
    pad = torch.arange(max_points)[None, :] >= num_points[:, None].long()
    voxels[pad] = float("nan")
    voxels[pad & (torch.arange(max_points)[None, :] % 2 == 0)] = 1e6
    return voxels, num_points, coords


def _pfn(**kwargs):
    args = dict(
        in_channels=4,
        feat_channels=[8, 6],
        voxel_size=VOXEL,
        point_cloud_range=RANGE,
    )
    args.update(kwargs)
    torch.manual_seed(0)
    return PillarFeatureNet(**args)


def _brute_force(pfn, voxels, num_points, coords, training):
    """Loop-per-pillar float64 reference of the pillar net on the valid points only."""
    vox = voxels.double().numpy()
    pts, owner = [], []
    for v in range(vox.shape[0]):
        p = vox[v, : int(num_points[v])]
        xyz = p[:, :3]
        b, z, y, x = (int(c) for c in coords[v])
        centre = np.array(
            [
                RANGE[0] + (x + 0.5) * VOXEL[0],
                RANGE[1] + (y + 0.5) * VOXEL[1],
                RANGE[2] + (z + 0.5) * VOXEL[2],
            ]
        )
        parts = [p]
        if pfn.with_cluster_center:
            parts.append(xyz - xyz.mean(axis=0))
        if pfn.with_voxel_center:
            parts.append(xyz - centre)
        if pfn.with_distance:
            parts.append(np.linalg.norm(xyz, axis=1, keepdims=True))
        pts.append(np.concatenate(parts, axis=1))
        owner += [v] * len(p)
    feats, owner = np.concatenate(pts), np.array(owner)
    pillar_max = None
    for linear, norm in zip(pfn.linears, pfn.norms):
        if pillar_max is not None:
            feats = np.concatenate([feats, pillar_max[owner]], axis=1)
        h = feats @ linear.weight.detach().double().numpy().T
        if training:
            mean, var = h.mean(axis=0), h.var(axis=0)
        else:
            mean, var = norm.running_mean.double().numpy(), norm.running_var.double().numpy()
        w, bias = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
        h = np.maximum((h - mean) / np.sqrt(var + norm.eps) * w + bias, 0.0)
        pillar_max = np.stack([h[owner == v].max(axis=0) for v in range(vox.shape[0])])
        feats = h
    return torch.from_numpy(pillar_max)


def _randomize_bn(pfn, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in pfn.norms:
            norm.weight.copy_(torch.rand(norm.num_features, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(norm.num_features, generator=g) * 0.1)
            norm.running_mean.copy_(torch.randn(norm.num_features, generator=g) * 0.1)
            norm.running_var.copy_(torch.rand(norm.num_features, generator=g) + 0.5)
    return pfn


@pytest.mark.parametrize("feat_channels", [[8], [8, 6], [8, 8, 5]])
@pytest.mark.parametrize("with_distance", [False, True])
def test_matches_brute_force_train_and_eval(feat_channels, with_distance):
    voxels, num_points, coords = _make_pillars()
    pfn = _pfn(feat_channels=feat_channels, with_distance=with_distance)
    _randomize_bn(pfn)
    pfn.train()
    out = pfn(voxels, num_points, coords)
    assert out.shape == (7, feat_channels[-1])
    ref = _brute_force(pfn, voxels, num_points, coords, training=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)

    pfn.eval()
    with torch.no_grad():
        out = pfn(voxels, num_points, coords)
    ref = _brute_force(pfn, voxels, num_points, coords, training=False)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 13])
def test_blocked_inference_equals_one_pass(chunk):
    """The no-grad eval forward runs over blocks of points; any block size gives the one-pass
    (autograd-enabled eval) result, padding ignored, blocks splitting pillars included."""
    voxels, num_points, coords = _make_pillars(num_pillars=20, max_points=6, seed=3)
    pfn = _pfn(feat_channels=[8, 8, 5], with_distance=True)
    _randomize_bn(pfn)
    pfn.eval()
    one_pass = pfn(voxels, num_points, coords).detach()  # grad enabled: the unblocked path
    pfn.inference_chunk = chunk
    with torch.no_grad():
        blocked = pfn(voxels, num_points, coords)
    torch.testing.assert_close(blocked, one_pass, rtol=1e-6, atol=1e-6)
    ref = _brute_force(pfn, voxels, num_points, coords, training=False)
    torch.testing.assert_close(blocked.double(), ref, rtol=1e-4, atol=1e-5)


def test_padding_never_enters_bn_statistics_or_max():
    voxels, num_points, coords = _make_pillars()
    clean = voxels.clone()
    pad = torch.arange(voxels.shape[1])[None, :] >= num_points[:, None].long()
    clean[pad] = 0.0
    assert torch.isnan(voxels).any()

    a, b = _pfn(), _pfn()
    out_garbage = a(voxels, num_points, coords)
    out_clean = b(clean, num_points, coords)
    assert torch.isfinite(out_garbage).all()
    torch.testing.assert_close(out_garbage, out_clean, rtol=0, atol=0)
    for na, nb in zip(a.norms, b.norms):  # the running statistics saw the same points
        torch.testing.assert_close(na.running_mean, nb.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(na.running_var, nb.running_var, rtol=0, atol=0)

    # counting the zero padding as points (the reference's BN statistics and max) differs
    full = torch.full_like(num_points, voxels.shape[1])
    assert not torch.allclose(_pfn()(clean, full, coords), out_clean)


def test_gradients_reach_only_valid_points():
    voxels, num_points, coords = _make_pillars()
    voxels = torch.nan_to_num(voxels, nan=3.0).requires_grad_(True)
    pfn = _pfn()
    pfn(voxels, num_points, coords).square().sum().backward()
    pad = torch.arange(voxels.shape[1])[None, :] >= num_points[:, None].long()
    assert (voxels.grad[pad] == 0).all()
    assert voxels.grad[~pad].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pfn.parameters())


def test_parameter_gradients_match_autograd_reference():
    """Gradients through the masked gather, the split second linear and the segment max equal
    those of a per-pillar loop written with plain torch ops (float64)."""
    voxels, num_points, coords = _make_pillars()
    voxels = torch.nan_to_num(voxels, nan=0.0).double()
    pfn = _pfn(feat_channels=[8, 6, 5]).double()
    _randomize_bn(pfn)
    upstream = torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (pfn(voxels, num_points, coords) * upstream).sum().backward()
    grads = [p.grad.clone() for p in pfn.parameters()]
    pfn.zero_grad()

    pts, owner = [], []
    for v in range(voxels.shape[0]):
        p = voxels[v, : int(num_points[v])]
        b, z, y, x = (int(c) for c in coords[v])
        centre = torch.tensor(
            [RANGE[0] + (x + 0.5) * VOXEL[0], RANGE[1] + (y + 0.5) * VOXEL[1], -1.0],
            dtype=torch.float64,
        )
        xyz = p[:, :3]
        pts.append(torch.cat([p, xyz - xyz.mean(dim=0), xyz - centre], dim=1))
        owner += [v] * len(p)
    feats, owner = torch.cat(pts), torch.tensor(owner)
    pillar_max = None
    for linear, norm in zip(pfn.linears, pfn.norms):
        if pillar_max is not None:
            feats = torch.cat([feats, pillar_max[owner]], dim=1)
        h = feats @ linear.weight.T
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + norm.eps)
        h = torch.relu(h * norm.weight + norm.bias)
        pillar_max = torch.stack([h[owner == v].max(dim=0).values for v in range(7)])
        feats = h
    (pillar_max * upstream).sum().backward()
    for got, p in zip(grads, pfn.parameters()):
        torch.testing.assert_close(got, p.grad)


def test_decoration_offsets():
    pfn = PillarFeatureNet(
        in_channels=4,
        feat_channels=[4],
        voxel_size=[0.25, 0.25, 8.0],
        point_cloud_range=[-50.0, -50.0, -5.0, 50.0, 50.0, 3.0],
    )
    points = torch.tensor([[0.1, 0.2, 0.5, 0.0], [0.2, 0.0, -0.5, 0.1]])
    coords = torch.tensor([[0, 0, 200, 200]])  # cell (y=200, x=200): x, y in [0, 0.25)
    dec = pfn.decorate(points, torch.zeros(2, dtype=torch.long), torch.tensor([2]), coords)
    expected = torch.tensor(
        [
            # raw, offset to the mean (0.15, 0.1, 0), offset to the centre (0.125, 0.125, -1)
            [0.1, 0.2, 0.5, 0.0, -0.05, 0.1, 0.5, -0.025, 0.075, 1.5],
            [0.2, 0.0, -0.5, 0.1, 0.05, -0.1, -0.5, 0.075, -0.125, 0.5],
        ]
    )
    torch.testing.assert_close(dec, expected)


def test_segment_max_matches_torch_max_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 1, 4, 2])
    ids = torch.repeat_interleave(torch.arange(4), lengths)
    x = torch.randn(int(lengths.sum()), 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = segment_max(x, ids, 4)
    ref = torch.stack([seg.max(dim=0).values for seg in torch.split(x, lengths.tolist())])
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(4, 5, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), x)
    torch.testing.assert_close(grad, grad_ref)
    assert torch.autograd.gradcheck(lambda t: segment_max(t, ids, 4), (x,))


def test_naive_sync_bn_equals_bn_in_one_process():
    voxels, num_points, coords = _make_pillars()
    a = _pfn(norm="BN")
    b = _pfn(norm="naiveSyncBN")
    assert isinstance(b.norms[0], NaiveSyncBatchNorm1d)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(voxels, num_points, coords), b(voxels, num_points, coords))
    a.eval()
    b.eval()
    torch.testing.assert_close(a(voxels, num_points, coords), b(voxels, num_points, coords))
    with pytest.raises(ValueError, match="NORM"):
        _pfn(norm="GN")


def test_bad_inputs_raise_clear_errors():
    voxels, num_points, coords = _make_pillars(channels=5)
    with pytest.raises(ValueError, match="POINT_FEATURES"):
        _pfn()(voxels, num_points, coords)
    with pytest.raises(ValueError, match="whole number"):
        grid_size_from_range([-50, -50, -5, 50, 50, 3], [0.3, 0.3, 8])


def test_empty_input():
    pfn = _pfn()
    out = pfn(torch.zeros(0, 5, 4), torch.zeros(0, dtype=torch.int32), torch.zeros(0, 4).int())
    assert out.shape == (0, 6)


def test_from_config_and_registry():
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.INPUT.POINT_FEATURES = ["x", "y", "z", "intensity", "time_lag"]
    cfg.MODEL.PILLAR_FEATURE_NET.WITH_DISTANCE = True
    cfg.MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS = [32, 16]
    cfg.MODEL.BN_EPS, cfg.MODEL.BN_MOMENTUM = 1e-3, 0.01
    assert "PillarFeatureNet" in PILLAR_ENCODER_REGISTRY
    pfn = build_pillar_encoder(cfg)
    assert isinstance(pfn, PillarFeatureNet)
    assert pfn.in_channels == 5 and pfn.decorated_channels == 12 and pfn.out_channels == 16
    assert [lin.weight.shape for lin in pfn.linears] == [(32, 12), (16, 64)]
    assert all(lin.bias is None for lin in pfn.linears)
    assert pfn.norms[0].eps == 1e-3 and pfn.norms[0].momentum == 0.01
    scatter = PillarScatter(cfg)
    assert scatter.grid_size == (400, 400)
    cfg.INPUT.POINT_FEATURES = ["time_lag", "x", "y", "z"]
    with pytest.raises(ValueError, match="start with x, y, z"):
        build_pillar_encoder(cfg)


def _hardvfe_reference(pfn, voxels, num_points, coords):
    """The reference's HardVFE written densely on (V, M, C), the padded slots as zero rows that
    go through every layer, the BN statistics (training) and the max."""
    max_points = voxels.shape[1]
    mask = (torch.arange(max_points)[None, :] < num_points[:, None].long())[..., None]
    voxels = torch.where(mask, voxels, torch.zeros_like(voxels))
    xyz = voxels[..., :3]
    mean = xyz.sum(1) / num_points[:, None].float()
    center = coords[:, [3, 2, 1]].float() * torch.tensor(VOXEL) + torch.tensor(RANGE[:3])
    center = center + torch.tensor(VOXEL) / 2
    x = torch.cat([voxels, xyz - mean[:, None], xyz - center[:, None]], 2) * mask
    for i, (linear, norm) in enumerate(zip(pfn.linears, pfn.norms)):
        x = torch.relu(norm(linear(x).permute(0, 2, 1)).permute(0, 2, 1))
        pillar_max = x.max(1, keepdim=True).values
        if i < len(pfn.linears) - 1:
            x = torch.cat([x, pillar_max.expand(-1, max_points, -1)], 2)
    return pillar_max[:, 0]


@pytest.mark.parametrize("feat_channels", [[8], [8, 6]])
def test_padded_slots_equal_the_reference_hardvfe_in_training(feat_channels):
    """Outputs, parameter gradients and BN running statistics of the virtual-row implementation
    equal the dense reference (padding rows in BN statistics and max)."""
    voxels, num_points, coords = _make_pillars(num_pillars=40, max_points=6)
    ours = _randomize_bn(_pfn(feat_channels=feat_channels, padded_slots=True)).train()
    ref = copy.deepcopy(ours)
    out = ours(voxels, num_points, coords)
    expected = _hardvfe_reference(ref, voxels, num_points, coords)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(ours.norms, ref.norms):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1


@pytest.mark.parametrize("padded_slots", [False, True])
@pytest.mark.parametrize("chunk", [3, 8192])
def test_eval_paths_and_dense_forward_agree(padded_slots, chunk):
    voxels, num_points, coords = _make_pillars(num_pillars=40, max_points=6)
    pfn = _randomize_bn(_pfn(feat_channels=[8, 6], padded_slots=padded_slots)).eval()
    pfn.inference_chunk = chunk
    with torch.no_grad():
        blocked = pfn(voxels, num_points, coords)
        dense = pfn.forward_dense(voxels, num_points, coords)
    one_pass = pfn(voxels, num_points, coords)  # grad enabled: the one-pass forward
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_pass, dense, rtol=1e-5, atol=1e-5)
    if padded_slots:
        expected = _hardvfe_reference(pfn, voxels, num_points, coords)
        torch.testing.assert_close(dense, expected, rtol=1e-5, atol=1e-5)
    else:
        padded = copy.deepcopy(pfn)
        padded.padded_slots = True
        with torch.no_grad():
            assert not torch.allclose(padded(voxels, num_points, coords), blocked)


def test_dense_forward_is_inference_only():
    voxels, num_points, coords = _make_pillars()
    with pytest.raises(RuntimeError, match="eval"):
        _pfn().train().forward_dense(voxels, num_points, coords)


@pytest.mark.parametrize("padded_slots", [False, True])
@pytest.mark.parametrize("feat_channels", [[8], [8, 6], [8, 8, 5]])
@pytest.mark.parametrize("with_distance", [False, True])
def test_factored_forward_equals_the_dense_forward(padded_slots, feat_channels, with_distance):
    """The exporters' formulation (decoration terms per pillar, padded slots holding the first
    point) gives the dense forward's features, garbage in the padded slots included."""
    voxels, num_points, coords = _make_pillars(num_pillars=40, max_points=6)
    pfn = _pfn(feat_channels=feat_channels, padded_slots=padded_slots, with_distance=with_distance)
    pfn = _randomize_bn(pfn).eval()
    with torch.no_grad():
        dense = pfn.forward_dense(voxels, num_points, coords)
        factored = pfn.forward_factored(voxels, num_points, coords)
    assert torch.isfinite(factored).all()
    torch.testing.assert_close(factored, dense, rtol=1e-5, atol=1e-5)
    # the padded rows matter in padded mode: the factored form keeps them
    if padded_slots:
        valid_only = copy.deepcopy(pfn)
        valid_only.padded_slots = False
        with torch.no_grad():
            assert not torch.allclose(
                valid_only.forward_factored(voxels, num_points, coords), dense
            )
    with pytest.raises(RuntimeError, match="eval"):
        pfn.train().forward_factored(voxels, num_points, coords)
