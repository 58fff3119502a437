"""The GPU side of ``python -m bench``: each stage's images/s against the trunk's.

On a GPU the question is whether the trunk is kept busy: the trunk's rate (fp32 and bf16, batch
32, 384×512) is the ceiling, and the input pipeline (decode in workers → uint8 → device →
normalise/pad), LOST and the whole ``eval run`` loop are reported as shares of it. Every function
takes the device, so the same code runs (slowly, on small inputs) on a CPU in the tests.
"""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable, Sequence

import torch

from discovery.eval.datasets import Item
from discovery.eval.loader import bucketed, decoded_stream
from discovery.images import normalize_and_pad_batch
from discovery.localizer import Localizer
from discovery.lost import localize_batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Images/s of the fastest of ``repeats`` calls of ``fn`` (which returns the images it did),
    after one warm-up call."""
    fn()
    synchronize(device)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        synchronize(device)
        best = max(best, n / (time.perf_counter() - start))
    return best


def trunk_rate(localizer: Localizer, batch: int, size: tuple[int, int], repeats: int) -> float:
    """Images/s of the trunk alone (the localizer's memory format and precision) on a random batch on its device."""
    device = localizer.backbone.device
    x = torch.randn(batch, 3, *size, device=device)
    return best_rate(lambda: (localizer.features(x), batch)[1], device, repeats)


def input_rate(items: Sequence[Item], stride: int, batch: int, workers: int, device: torch.device, mean, std) -> float:
    """Images/s of the input pipeline alone: decode in ``workers`` processes, bucket, uint8 to the
    device, normalise and pad there (no network)."""

    def once() -> int:
        done = 0
        for group in bucketed(decoded_stream(items, stride, workers), batch):
            good = [d.rgb for d in group if d.rgb is not None]
            if good:
                normalize_and_pad_batch(good, mean, std, stride, device)
                done += len(good)
        return done

    return best_rate(once, device, 1)


def lost_rate(localizer: Localizer, batch: int, size: tuple[int, int], repeats: int) -> float:
    """Images/s of LOST (batched on the device, connected components on the CPU) on real features
    of random images of ``size``."""
    device = localizer.backbone.device
    feats = localizer.features(torch.randn(batch, 3, *size, device=device))
    sizes = [size] * batch
    return best_rate(lambda: (localize_batch(feats, sizes, stride=localizer.stride), batch)[1], device, repeats)


def machine(device: torch.device) -> dict[str, str]:
    """The card (or CPU) and the date, for the report."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"machine": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__}


def device_figures(
    items: Sequence[Item], device: str, workers: int, batch: int = 32, size: tuple[int, int] = (384, 512),
    repeats: int = 5, tf32: bool = False,
) -> dict:
    """Trunk img/s in fp32 and bf16, input pipeline, LOST: the figures of the GPU table."""
    dev = torch.device(device)
    fp32 = Localizer("random", device=dev, max_side=None, tf32=tf32)
    bf16 = Localizer(fp32.backbone, max_side=None, precision="bf16", tf32=tf32)
    out = {**machine(dev), "batch": batch, "size": list(size), "workers": workers, "fp32_math": "tf32" if tf32 else "ieee"}
    out["trunk_fp32_img_s"] = round(trunk_rate(fp32, batch, size, repeats), 1)
    out["trunk_bf16_img_s"] = round(trunk_rate(bf16, batch, size, repeats), 1)
    out["input_img_s"] = round(input_rate(items, fp32.stride, batch, workers, dev, fp32.backbone.mean, fp32.backbone.std), 1)
    out["lost_img_s"] = round(lost_rate(fp32, batch, size, repeats), 1)
    return out
