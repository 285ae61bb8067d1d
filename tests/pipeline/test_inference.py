"""channels_last inference: same probabilities as the plain network, and autograd still works after."""

from __future__ import annotations

import numpy as np
import torch

from cds.ml.unet import UNet2D, UNetConfig
from cds.pipeline.inference import prepare, softmax_forward


def test_channels_last_forward_matches_plain_and_keeps_autograd() -> None:
    torch.manual_seed(0)
    net = UNet2D(UNetConfig(in_channels=1, num_classes=4, base_channels=8, depth=3, groups=4)).eval()
    images = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        plain = torch.softmax(net(torch.from_numpy(images)[:, None]), dim=1).numpy()
    got = softmax_forward(net, torch.device("cpu"), images)
    assert got.shape == (3, 4, 32, 32) and got.flags.c_contiguous
    np.testing.assert_allclose(got, plain, atol=1e-5)
    assert prepare(net) is net  # converted once, idempotent
    # Grad-CAM runs backward passes through the same cached network: weights must not be inference tensors
    x = torch.from_numpy(images[:1, None]).requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
