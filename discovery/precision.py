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


def precision_record(device: str | torch.device, precision: str, tf32: bool) -> dict[str, object]:
    """What a run's ``config.json`` / metadata records: the autocast precision of the trunk, and the
    fp32 math mode on CUDA (``ieee`` or ``tf32``; CPUs compute fp32 as IEEE fp32)."""
    on_cuda = torch.device(device).type == "cuda"
    return {"precision": precision, "fp32_math": fp32_mode(tf32) if on_cuda else "ieee"}
