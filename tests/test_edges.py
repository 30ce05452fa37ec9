"""Edges users expect: TorchScript, quiet Lightning logs, LightningCLI configs."""
import io
import warnings

import pytest
import torch
from torch.nn import functional as F

from fastmri_growth.models import DynamicUnet


# ---------------------------------------------------------------------------
# torch.jit.script
# ---------------------------------------------------------------------------


def _jit(fn, *args):
    with warnings.catch_warnings():
        # torch 2.10+ deprecates TorchScript (still supported, and what fastMRI users run).
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


def _script(net):
    return _jit(torch.jit.script, net)


def test_dynamic_unet_scripts_before_and_after_growth_with_eager_outputs():
    """fastMRI's Unet scripts; so does a DynamicUnet, fresh and grown at every kind of
    site (block convs and a transposed conv), on an odd-sized input (the reflect-pad path)."""
    torch.manual_seed(0)
    net = DynamicUnet(1, 1, chans=2, num_pool_layers=2).eval()
    x = torch.randn(2, 1, 17, 13)
    y = torch.randn(2, 1, 17, 13)
    with torch.no_grad():
        torch.testing.assert_close(_script(net)(x), net(x), rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    for layer, conv in (("down_0", 1), ("bottleneck", 0), ("up_0", "t"), ("up_1", 1)):
        net.grow_network(layer, conv, x, y, n_new=2, generator=g)
    # Non-zero new fan-outs, so the grown channels reach the output.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    assert net.get_network_size()["up_0"]["transpose_out"] == 4 + 2
    scripted = _script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)
    # The scripted copy saves, loads and trains as any TorchScript module.
    buffer = io.BytesIO()
    _jit(torch.jit.save, scripted, buffer)
    buffer.seek(0)
    loaded = _jit(torch.jit.load, buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    F.l1_loss(loaded(x), y).backward()
    assert all(p.grad is not None for p in loaded.parameters())
