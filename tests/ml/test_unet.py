"""The network keeps the input's spatial size and rejects sizes its pooling cannot invert."""

from __future__ import annotations

import pytest
import torch

from cds.ml.unet import UNet2D, UNetConfig, count_parameters


def test_output_has_one_logit_map_per_class_at_input_size() -> None:
    net = UNet2D(UNetConfig(base_channels=4, depth=3, num_classes=4, groups=2))
    out = net(torch.zeros(2, 1, 32, 48))
    assert out.shape == (2, 4, 32, 48)


def test_size_not_multiple_of_divisor_is_rejected() -> None:
    net = UNet2D(UNetConfig(base_channels=4, depth=3, groups=2))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 30, 32))


def test_shipped_configuration_stays_cpu_sized() -> None:
    """A few million parameters at most: the model must run on a shared 2-core CPU."""
    n = count_parameters(UNet2D(UNetConfig(base_channels=16, depth=5)))
    assert 500_000 < n < 3_000_000
