"""Reference ImageNet RegNets for the RegNet checkpoint tests: pycls and torchvision networks with
random (non-trivial) weights, built locally, and saved in their native file formats."""

import torch
import torchvision

TORCHVISION_NAMES = {"400MF": "regnet_x_400mf", "1.6GF": "regnet_x_1_6gf"}


def randomize(model, seed):
    """Random weights everywhere, including non-trivial BN affine parameters and running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
    return model.eval()


def build_torchvision_regnet(arch, seed=1):
    return randomize(getattr(torchvision.models, TORCHVISION_NAMES[arch])(weights=None), seed)


def save_native_sources(directory, pycls_regnetx):
    """{(format, arch): (model, path)}: RegNetX-400MF and -1.6GF as pycls ``.pyth`` files
    ({"model_state", "epoch"}) and torchvision state dicts, in ``directory``."""
    out = {}
    for arch in ("400MF", "1.6GF"):
        with pycls_regnetx(arch) as RegNet:
            model = randomize(RegNet(), seed=0)
        path = str(directory / f"RegNetX-{arch}_dds_8gpu.pyth")
        torch.save({"epoch": 100, "model_state": model.state_dict()}, path)
        out[("pycls", arch)] = (model, path)
        model = build_torchvision_regnet(arch)
        path = str(directory / f"{TORCHVISION_NAMES[arch]}.pth")
        torch.save(model.state_dict(), path)
        out[("torchvision", arch)] = (model, path)
    return out
