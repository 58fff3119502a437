"""Matrix products through oneDNN on the CPU: ``x @ wᵀ (+ b)`` as a 1×1 channels-last convolution.

On the AMD EPYC development machine MKL's float32 ``sgemm`` reaches ≈ 200 GFLOP/s and oneDNN's
convolutions ≈ 410 (``python -m bench``'s GEMM line), and the same product through oneDNN runs
≈ 2× faster for a ViT's linear layers and LOST's N × N affinity (docs/performance.md). The result
equals ``F.linear``'s to float32 rounding, not bit for bit, so it is used only where no gradient
is wanted, on the CPU, in float32 and outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def usable(x: torch.Tensor) -> bool:
    """Whether :func:`linear` applies to ``x`` (CPU float32 inference, no autocast)."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` ``(..., in)`` and ``weight`` ``(out, in)``, through oneDNN."""
    lead = x.shape[:-1]
    image = x.reshape(1, 1, -1, x.shape[-1]).permute(0, 3, 1, 2)  # (1, in, 1, rows): channels-last, no copy
    out = F.conv2d(image, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, -1)
