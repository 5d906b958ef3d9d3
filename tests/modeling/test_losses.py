import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from d2_pillars.modeling.losses import sigmoid_focal_loss_sparse


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.5), (-1.0, 2.0)])
def test_sparse_focal_loss_matches_fvcore(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    n, c = 300, 5
    logits = torch.randn(n, c, generator=g) * 6  # includes saturated logits
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    weights = (torch.rand(n, generator=g) > 0.1).float()  # ~10% ignored anchors
    labels[weights == 0] = c
    pos = (labels < c).nonzero()[:, 0]

    x1 = logits.clone().requires_grad_()
    targets = torch.zeros(n, c)
    targets[pos, labels[pos]] = 1.0
    want = (sigmoid_focal_loss(x1, targets, alpha, gamma, "none") * weights[:, None]).sum()
    want.backward()

    x2 = logits.clone().requires_grad_()
    got = sigmoid_focal_loss_sparse(x2, weights, pos, labels[pos], alpha, gamma)
    got.backward()
    # fvcore computes in float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-6)


def test_sparse_focal_loss_without_positives():
    logits = torch.randn(10, 3, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = sigmoid_focal_loss_sparse(logits, torch.ones(10), empty, empty)
    want = sigmoid_focal_loss(logits, torch.zeros(10, 3), 0.25, 2.0, "sum")
    torch.testing.assert_close(loss, want)
