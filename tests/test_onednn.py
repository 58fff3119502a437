"""discovery.onednn: the CPU product through oneDNN equals F.linear to float32 rounding, and is
used only for CPU float32 inference outside autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discovery import onednn


@pytest.mark.parametrize(("shape", "out", "bias"), [((5, 7), 3, True), ((2, 9, 16), 8, False), ((1, 768, 64), 768, False)])
def test_linear_equals_f_linear(shape, out, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    weight = torch.randn(out, shape[-1], generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    got = onednn.linear(x, weight, b)
    assert got.shape == (*shape[:-1], out)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-4)


def test_usable_only_for_cpu_float32_inference():
    x = torch.ones(2, 3)
    with torch.no_grad():
        assert onednn.usable(x)
        assert not onednn.usable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.usable(x)
    with torch.enable_grad():
        assert not onednn.usable(x)
