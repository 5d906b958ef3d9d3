import itertools
import logging
import pytest
import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer

from d2_pillars.engine import amp as amp_module
from d2_pillars.engine.amp import AutocastTrainer, build_step_trainer


class _SqrtModel(nn.Module):
    """loss = sum(sqrt(|W x|)): finite for x = 0, but its gradient there is NaN (0 / 0)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2, bias=False)
        nn.init.constant_(self.linear.weight, 0.5)

    def forward(self, x):
        y = self.linear(x)
        return {"loss_sqrt": y.float().abs().sqrt().sum()}


def _trainer(batches, grad_scaler):
    model = _SqrtModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return AutocastTrainer(
        model, itertools.cycle(batches), optimizer, "cpu", torch.float16, grad_scaler
    )


def test_float16_loss_scaling_skips_nan_gradient_steps_and_logs_them():
    good, bad = torch.ones(3, 4), torch.zeros(3, 4)
    trainer = _trainer([good, bad, good], torch.amp.GradScaler("cpu", init_scale=1024.0))
    w0 = trainer.model.linear.weight.detach().clone()
    trainer.train(0, 3)

    assert trainer.skipped_steps == 1
    assert trainer.grad_scaler.get_scale() == 512.0  # halved once by the NaN step
    w = trainer.model.linear.weight.detach()
    assert torch.isfinite(w).all() and not torch.equal(w, w0)  # the two good steps applied
    history = trainer.storage.history("amp_skipped_steps").values()
    assert [v for v, _ in history] == [0, 1, 1]
    assert [v for v, _ in trainer.storage.history("amp_loss_scale").values()] == [
        1024.0,
        512.0,
        512.0,
    ]


def test_skipped_step_leaves_weights_untouched():
    trainer = _trainer([torch.zeros(3, 4)], torch.amp.GradScaler("cpu", init_scale=8.0))
    w0 = trainer.model.linear.weight.detach().clone()
    trainer.train(0, 1)
    assert trainer.skipped_steps == 1
    assert torch.equal(trainer.model.linear.weight.detach(), w0)


def test_grad_scaler_state_round_trips_with_amp_trainer_keys():
    trainer = _trainer([torch.zeros(3, 4)], torch.amp.GradScaler("cpu", init_scale=64.0))
    trainer.train(0, 1)
    state = trainer.state_dict()
    assert {"optimizer", "grad_scaler"} <= set(state)

    other = _trainer([torch.ones(3, 4)], torch.amp.GradScaler("cpu", init_scale=4096.0))
    other.load_state_dict(state)
    assert other.grad_scaler.get_scale() == 32.0


def test_bfloat16_without_scaler_trains_and_logs_no_scale():
    trainer = _trainer([torch.ones(3, 4)], None)
    trainer.model.forward = lambda x: {"loss": trainer.model.linear(x).float().pow(2).sum()}
    w0 = trainer.model.linear.weight.detach().clone()
    trainer.dtype = torch.bfloat16
    trainer.train(0, 2)
    assert not torch.equal(trainer.model.linear.weight.detach(), w0)
    assert "amp_loss_scale" not in trainer.storage.histories()
    assert "grad_scaler" not in trainer.state_dict()


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("native_bf16", [False, True])
def test_build_step_trainer_on_cpu(amp, native_bf16, monkeypatch, capture_logs):
    monkeypatch.setattr(amp_module, "cpu_has_native_bfloat16", lambda: native_bf16)
    cfg = CfgNode({"SOLVER": {"AMP": {"ENABLED": amp}}})
    model = _SqrtModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with capture_logs(amp_module.logger, logging.WARNING) as records:
        trainer = build_step_trainer(cfg, model, iter([]), optimizer)
    if not amp or not native_bf16:
        # emulated bfloat16 is several times slower than float32: AMP trains in float32 there
        assert type(trainer) is SimpleTrainer
        assert len(records) == (1 if amp else 0)
        assert not records or "no native bfloat16" in records[0].getMessage()
    else:
        assert isinstance(trainer, AutocastTrainer) and not records
        assert (trainer.device_type, trainer.dtype, trainer.grad_scaler) == (
            "cpu",
            torch.bfloat16,
            None,
        )


def test_native_bfloat16_detection_answers():
    assert isinstance(amp_module.cpu_has_native_bfloat16(), bool)
