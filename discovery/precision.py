"""How float32 math runs on GPUs: real IEEE fp32 by default, TensorFloat-32 only when asked.

PyTorch lets cuDNN use TF32 (10-bit mantissa) inside "fp32" convolutions by default on Ampere and
later GPUs, so GPU fp32 features differ from CPU fp32 ones. The toolkit's policy: fp32 runs are
IEEE fp32 (``tf32=False``); ``--tf32`` opts in. The flags are set only around the calls that run
the network (:func:`fp32_math`), never at import, and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def fp32_mode(tf32: bool) -> str:
    """PyTorch's name for the fp32 math mode: ``"tf32"`` or ``"ieee"``."""
    return "tf32" if tf32 else "ieee"


@contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """Run the body with cuDNN convolutions and CUDA matmuls in IEEE fp32 (``tf32=False``) or TF32.

    Uses PyTorch's ``fp32_precision`` flags (the legacy ``allow_tf32`` ones must not be mixed
    with them); no effect on CPU math.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = matmul.fp32_precision = fp32_mode(tf32)
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def conv_layout(device: str | torch.device, precision: str, tf32: bool) -> torch.memory_format:
    """The memory format the trunk runs in: channels-last, except IEEE fp32 on CUDA.

    Measured on an NVIDIA H200 (docs/performance.md): in IEEE fp32, cuDNN's channels-last kernels
    for layer4's dilated convolutions take 461 ms per batch of 32 at 384x512, and the whole trunk
    runs at 64 img/s against 514 img/s in NCHW; with TF32 or bf16 (tensor cores) and on CPUs
    (oneDNN) channels-last is the faster layout.
    """
    ieee_cuda = torch.device(device).type == "cuda" and precision == "fp32" and not tf32
    return torch.contiguous_format if ieee_cuda else torch.channels_last


def precision_record(device: str | torch.device, precision: str, tf32: bool) -> dict[str, object]:
    """What a run's ``config.json`` / metadata records: the autocast precision of the trunk, and the
    fp32 math mode on CUDA (``ieee`` or ``tf32``; CPUs compute fp32 as IEEE fp32)."""
    on_cuda = torch.device(device).type == "cuda"
    return {"precision": precision, "fp32_math": fp32_mode(tf32) if on_cuda else "ieee"}
