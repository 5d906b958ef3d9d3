"""The on-device form of the torch NMS (d2_pillars.layers.nms: dense pair blocks + fixed-point
greedy), which CUDA runs: forced on the CPU here, it must keep exactly the boxes of the host
(numpy) greedy form and of a plain-Python greedy NMS. ``cuda``-marked tests compare the CUDA
results with the CPU ones."""

import math
import pytest
import torch

from d2_pillars.layers import (
    batched_nms_rotated_bev,
    multiclass_nms_rotated_bev,
    nms,
    nms_rotated_bev,
    pairwise_iou_rotated_bev,
)
from d2_pillars.layers.nms import greedy_fixed_point, overlap_graph, overlap_pairs_dense

from test_nms import clustered_boxes, make_case, reference_nms  # noqa: I100


@pytest.fixture
def on_device_form(monkeypatch):
    """Run the on-device form for CPU tensors too (within the test)."""
    monkeypatch.setattr(nms, "HOST_GREEDY_DEVICES", ())


def _both_forms(monkeypatch, fn):
    host = fn()
    monkeypatch.setattr(nms, "HOST_GREEDY_DEVICES", ())
    device = fn()
    monkeypatch.setattr(nms, "HOST_GREEDY_DEVICES", ("cpu",))
    return host, device


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_pairs_dense_equals_overlap_graph(seed, threshold):
    gen = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(gen, 400, 15)
    groups = torch.randint(0, 3, (400,), generator=gen)
    for g in (None, groups):
        i, j = overlap_pairs_dense(boxes, threshold, groups=g)
        ref_i, ref_j = overlap_graph(boxes, threshold, groups=g)
        assert bool((i < j).all())
        assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(ref_i.tolist(), ref_j.tolist()))


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.5])
def test_device_form_matches_bruteforce(on_device_form, threshold):
    boxes, scores, iou = make_case(3, 250, 12, threshold)
    keep = nms_rotated_bev(boxes, scores, threshold)
    assert keep.tolist() == reference_nms(iou, scores, threshold)


def test_device_form_equals_host_form_single_batched_multiclass(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    boxes = clustered_boxes(gen, 1500, 60)
    scores = torch.rand(1500, generator=gen)
    groups = torch.randint(0, 4, (1500,), generator=gen)
    per_class = 0.06 + 0.94 * torch.rand(1500, 10, generator=gen)
    for fn in (
        lambda: nms_rotated_bev(boxes, scores, 0.2),
        lambda: batched_nms_rotated_bev(boxes, scores, groups, 0.3),
        lambda: multiclass_nms_rotated_bev(boxes, per_class, 0.5, 0.2, 300),
        lambda: multiclass_nms_rotated_bev(boxes, per_class, 0.05, 0.2, 0),
    ):
        host, device = _both_forms(monkeypatch, fn)
        if isinstance(host, tuple):
            for a, b in zip(host, device):
                assert torch.equal(a, b)
        else:
            assert torch.equal(host, device)


def test_device_form_ties_keep_lower_index_and_empty(on_device_form):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0, 0.0]] * 3 + [[10.0, 0.0, 2.0, 1.0, 0.0]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5])
    assert nms_rotated_bev(boxes, scores, 0.5).tolist() == [2, 3]
    assert nms_rotated_bev(boxes, torch.full((4,), 0.5), 0.5).tolist() == [0, 3]
    assert nms_rotated_bev(boxes[:0], scores[:0], 0.5).numel() == 0
    box, label, score = multiclass_nms_rotated_bev(boxes, torch.zeros(4, 3), 0.1, 0.5, 10)
    assert box.numel() == label.numel() == score.numel() == 0


def test_fixed_point_on_a_long_suppression_chain(on_device_form):
    """Boxes 0.6 m apart along x, scores decreasing: every box overlaps the next (IoU 0.54 >
    0.5), so greedy keeps every other one; the chain is as long as the set."""
    n = 101
    boxes = torch.zeros(n, 5)
    boxes[:, 0] = torch.arange(n) * 0.6
    boxes[:, 2], boxes[:, 3] = 2.0, 1.0
    scores = torch.linspace(1.0, 0.1, n)
    iou = pairwise_iou_rotated_bev(boxes, boxes)
    assert float(iou[0, 1]) > 0.5 and float(iou[0, 2]) < 0.5
    assert nms_rotated_bev(boxes, scores, 0.5).tolist() == list(range(0, n, 2))


def test_greedy_fixed_point_without_edges_keeps_candidates():
    cand = torch.tensor([[True, False], [False, True]])
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(greedy_fixed_point(cand, torch.rand(2, 2), empty, empty), cand)


@pytest.mark.cuda
def test_cuda_nms_equals_cpu():
    gen = torch.Generator().manual_seed(0)
    boxes = clustered_boxes(gen, 3000, 150)
    scores = 0.06 + 0.94 * torch.rand(3000, 10, generator=gen)
    cpu = multiclass_nms_rotated_bev(boxes, scores, 0.05, 0.2, 500)
    dev = multiclass_nms_rotated_bev(boxes.cuda(), scores.cuda(), 0.05, 0.2, 500)
    # IoUs computed by CUDA kernels may differ in the last bits: allow decisions at the margin
    same = sum(int(a == b) for a, b in zip(cpu[0].tolist(), dev[0].cpu().tolist()))
    assert same >= 0.99 * cpu[0].numel()
    single = nms_rotated_bev(boxes, scores[:, 0], 0.2)
    single_dev = nms_rotated_bev(boxes.cuda(), scores[:, 0].cuda(), 0.2).cpu()
    assert len(set(single.tolist()) ^ set(single_dev.tolist())) <= max(2, single.numel() // 100)
    assert math.isfinite(float(dev[2].sum()))
