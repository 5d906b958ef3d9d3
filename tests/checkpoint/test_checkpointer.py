"""PillarsCheckpointer: box-convention stamp and check, atomic saves, weights_only loads, and
RegNet conversion on load (MODEL.WEIGHTS naming a pycls .pyth or a torchvision file)."""

import logging
import numpy as np
import os
import pickle
import pytest
import torch
import torchvision
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler

from d2_pillars.checkpoint import (
    BOX_CONVENTION_KEY,
    BoxConventionMismatchError,
    PillarsCheckpointer,
    RegNetCheckpointError,
)
from d2_pillars.checkpoint import checkpointer as checkpointer_module
from d2_pillars.structures import BOX_CONVENTION_VERSION


class TinyDetector(nn.Module):
    """A model with a backbone and a head, like the meta-arch's top-level names."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, batch):
        x = torch.ones(1, 2, 5, 5)
        return {"loss": self.head(self.backbone(x).mean((2, 3))).pow(2).sum()}


def _random_like(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=g))
    return model


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ #
# Saving
# ------------------------------------------------------------------------------------------------ #
def test_save_stamps_version_and_writes_atomically(tmp_path):
    model = _random_like(TinyDetector(), 0)
    ckpt = PillarsCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert saved[BOX_CONVENTION_KEY] == BOX_CONVENTION_VERSION
    assert saved["iteration"] == 9
    assert _states_equal(saved["model"], model.state_dict())

    # A save that fails half-way (an extra that cannot be pickled) leaves the previous file,
    # last_checkpoint and the directory as they were.
    before = (tmp_path / "model_0000009.pth").read_bytes()
    _random_like(model, 1)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        ckpt.save("model_0000009", not_picklable=lambda: None)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "model_0000009.pth").read_bytes() == before


def test_resume_restores_model_optimizer_scheduler_and_iteration(tmp_path):
    def make():
        model = TinyDetector()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        sched = LRMultiplier(
            opt,
            WarmupParamScheduler(
                MultiStepParamScheduler([1.0, 0.1], milestones=[5], num_updates=10), 0.001, 0.1
            ),
            max_iter=10,
        )
        trainer = SimpleTrainer(model, [{}] * 100, opt)
        trainer.register_hooks([hooks.LRScheduler(opt, sched)])
        return model, opt, sched, trainer

    model, opt, sched, trainer = make()
    trainer.train(0, 4)
    ckpt = PillarsCheckpointer(
        model, str(tmp_path), optimizer=opt, scheduler=sched, trainer=trainer
    )
    ckpt.save("model_0000003", iteration=3)

    model2, opt2, sched2, trainer2 = make()
    ckpt2 = PillarsCheckpointer(
        model2, str(tmp_path), optimizer=opt2, scheduler=sched2, trainer=trainer2
    )
    extra = ckpt2.resume_or_load("ignored_when_resuming.pth", resume=True)
    assert extra["iteration"] == 3 and extra[BOX_CONVENTION_KEY] == BOX_CONVENTION_VERSION
    assert _states_equal(model2.state_dict(), model.state_dict())
    assert sched2.last_epoch == sched.last_epoch == 4
    assert trainer2.iter == trainer.iter
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert all(torch.equal(s1[k][n], s2[k][n]) for n in s1[k])


# ------------------------------------------------------------------------------------------------ #
# Loading: box convention and safety
# ------------------------------------------------------------------------------------------------ #
def test_other_box_convention_is_refused(tmp_path):
    source = _random_like(TinyDetector(), 0).state_dict()
    path = str(tmp_path / "old_convention.pth")
    torch.save({"model": source, BOX_CONVENTION_KEY: BOX_CONVENTION_VERSION + 1}, path)
    model = _random_like(TinyDetector(), 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BoxConventionMismatchError) as e:
        PillarsCheckpointer(model).load(path)
    assert path in str(e.value)
    assert f"version {BOX_CONVENTION_VERSION + 1}" in str(e.value)
    assert _states_equal(model.state_dict(), before)  # nothing was loaded

    torch.save({"model": source, BOX_CONVENTION_KEY: BOX_CONVENTION_VERSION}, path)
    PillarsCheckpointer(model).load(path)
    assert _states_equal(model.state_dict(), source)


def test_unversioned_checkpoint_with_head_weights_warns(tmp_path, capture_logs):
    source = _random_like(TinyDetector(), 0).state_dict()
    logger = logging.getLogger(checkpointer_module.__name__)
    full, backbone_only = str(tmp_path / "full.pth"), str(tmp_path / "backbone.pth")
    torch.save({"model": source}, full)
    torch.save({k: v for k, v in source.items() if k.startswith("backbone.")}, backbone_only)
    with capture_logs(logger, logging.INFO) as records:
        PillarsCheckpointer(TinyDetector()).load(backbone_only)
    assert not [r for r in records if r.levelno >= logging.WARNING]
    with capture_logs(logger, logging.INFO) as records:
        model = TinyDetector()
        PillarsCheckpointer(model).load(full)
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and full in warnings[0] and "head.weight" in warnings[0]
    assert _states_equal(model.state_dict(), source)


def test_pickled_code_is_never_run(tmp_path, code_running_pickle):
    evil, marker = code_running_pickle
    path = str(tmp_path / "evil.pth")
    torch.save({"model": TinyDetector().state_dict(), "evil": evil}, path)
    with pytest.raises(RegNetCheckpointError, match="weights_only"):
        PillarsCheckpointer(TinyDetector()).load(path)
    assert not marker.exists()


def test_detectron2_pkl_format_still_loads(tmp_path):
    source = _random_like(TinyDetector(), 2).state_dict()
    path = str(tmp_path / "d2.pkl")
    with open(path, "wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in source.items()},
                "__author__": "test",
                BOX_CONVENTION_KEY: BOX_CONVENTION_VERSION,
            },
            f,
        )
    model = TinyDetector()
    PillarsCheckpointer(model).load(path)
    assert _states_equal(model.state_dict(), source)


def test_pyth_that_is_not_a_regnet(tmp_path):
    path = str(tmp_path / "not_regnet.pyth")
    torch.save({"epoch": 1, "weights": {}}, path)
    with pytest.raises(RegNetCheckpointError, match="pycls"):
        PillarsCheckpointer(TinyDetector()).load(path)


# ------------------------------------------------------------------------------------------------ #
# MODEL.WEIGHTS pointing at ImageNet RegNet files
# ------------------------------------------------------------------------------------------------ #
@pytest.fixture
def pycls_400mf_state(pycls_regnetx):
    """State dict of pycls's ImageNet RegNetX-400MF with random weights (seed 3)."""
    with pycls_regnetx("400MF") as RegNet:
        model = RegNet()
    return _random_like(model, 3).state_dict()


@pytest.mark.parametrize("fmt", ["pycls", "torchvision"])
def test_weights_file_converted_on_load(tmp_path, fmt, regnet_pointpillars, request, capture_logs):
    if fmt == "pycls":
        arch, source = "400MF", request.getfixturevalue("pycls_400mf_state")
        path = str(tmp_path / "RegNetX-400MF_dds_8gpu.pyth")
        torch.save({"epoch": 99, "model_state": source}, path)
        # pycls name -> same name; torchvision would need renaming (checked below)
        expected = {k: v for k, v in source.items() if not k.startswith(("stem.", "head."))}
    else:
        arch = "1.6GF"  # torchvision's regnet_x_1_6gf has pycls's widths (its 400MF does not)
        tv = _random_like(torchvision.models.regnet_x_1_6gf(weights=None), 4)
        path = str(tmp_path / "regnet_x_1_6gf-a12f2b72.pth")
        torch.save(tv.state_dict(), path)
        sd = tv.state_dict()
        expected = {
            "s3.b10.f.b.weight": sd["trunk_output.block3.block3-9.f.b.0.weight"],
            "s3.b10.f.b_bn.running_var": sd["trunk_output.block3.block3-9.f.b.1.running_var"],
            "s1.b2.proj.weight": None,  # no projection in the second block
            "s2.b1.bn.running_mean": sd["trunk_output.block2.block2-0.proj.1.running_mean"],
            "s4.b2.f.c.weight": sd["trunk_output.block4.block4-1.f.c.0.weight"],
            "s1.b1.f.a_bn.weight": sd["trunk_output.block1.block1-0.f.a.1.weight"],
        }
    _, model = regnet_pointpillars(arch)
    prefix = "backbone.bottom_up."
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logger = logging.getLogger(checkpointer_module.__name__)
    ckpt = PillarsCheckpointer(model)
    ckpt.logger = logger
    with capture_logs(logger, logging.INFO) as records:
        extra = ckpt.resume_or_load(path, resume=False)
    assert extra[BOX_CONVENTION_KEY] == BOX_CONVENTION_VERSION
    text = "\n".join(r.getMessage() for r in records)
    assert "left at initialisation" in text and prefix + "s1.b1.f.a.weight" in text
    assert "not used by the model" not in text  # fvcore's unexpected-keys warning
    assert "incompatible shapes" not in text

    state = model.state_dict()
    for key, value in expected.items():
        if value is None:
            assert prefix + key not in state
            continue
        if key in ("s1.b1.f.a.weight", "s1.b1.proj.weight"):
            continue
        assert torch.equal(state[prefix + key], value), key
    for key in ("s1.b1.f.a.weight", "s1.b1.proj.weight"):  # 64 pillar channels vs 32: untouched
        assert torch.equal(state[prefix + key], before[prefix + key])
    changed = [k for k in state if not torch.equal(state[k], before[k])]
    assert changed and all(k.startswith(prefix) for k in changed)  # neck and head untouched


def test_mismatched_weights_file_names_the_stage(tmp_path, regnet_pointpillars, pycls_400mf_state):
    path = str(tmp_path / "RegNetX-400MF_dds_8gpu.pyth")
    torch.save({"model_state": pycls_400mf_state}, path)
    _, model = regnet_pointpillars("1.6GF")
    with pytest.raises(RegNetCheckpointError) as e:
        PillarsCheckpointer(model).load(path)
    assert path in str(e.value)
    assert "stage s3 has 10 blocks in the config but 7 in SRC" in str(e.value)


def test_regnet_file_into_a_model_without_regnet(tmp_path, pycls_400mf_state):
    path = str(tmp_path / "RegNetX-400MF_dds_8gpu.pyth")
    torch.save({"model_state": pycls_400mf_state}, path)
    with pytest.raises(RegNetCheckpointError) as e:
        PillarsCheckpointer(TinyDetector()).load(path)
    assert path in str(e.value) and "no RegNet backbone" in str(e.value)


def test_converted_file_loads_through_pillars_checkpointer(
    tmp_path, regnet_pointpillars, pycls_400mf_state
):
    from d2_pillars.checkpoint.regnet_converter import convert_to_model, save_converted_checkpoint

    _, model = regnet_pointpillars("400MF", "build_regnet_secfpn_backbone")
    source = pycls_400mf_state
    state, report = convert_to_model(source, model.state_dict())
    path = str(tmp_path / "regnetx_400mf_bev.pth")
    save_converted_checkpoint(path, state, report)
    _, fresh = regnet_pointpillars("400MF", "build_regnet_secfpn_backbone")
    PillarsCheckpointer(fresh).load(path)
    loaded = fresh.state_dict()
    np.testing.assert_array_equal(
        loaded["backbone.bottom_up.s4.b12.f.c_bn.running_mean"].numpy(),
        source["s4.b12.f.c_bn.running_mean"].numpy(),
    )
