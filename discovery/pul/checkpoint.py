"""PUL's file formats and the checkpoint's metadata (provenance); the writing is :mod:`discovery.trainstate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..backbone import PIPELINE_CHECK
from ..precision import precision_record
from ..provenance import git_revision
from .data import labels_digest, resize_side
from .model import HEADLESS_CLASSES, TRAIN_STRIDE

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..distributed import DistContext
    from .config import PULConfig
    from .data import ImageList

FORMAT = "discovery-pul/1"
STATE_FORMAT = "discovery-pul-state/1"


def epoch_path(out: Path, epoch: int) -> Path:
    """Where ``--save-every-epoch`` writes the weights after ``epoch`` epochs: ``OUT.epochK.safetensors``
    (``K = 0``: before the first step)."""
    return out.with_name(f"{out.stem}.epoch{epoch}{out.suffix}")


def _pooled(base: Backbone) -> str:
    if base.is_resnet50:
        return "global-average-pooled layer4"
    return "the ViT's pooled token (CLS after the final norm)" if not base.standardize else "global-average-pooled trunk features"


def metadata(
    config: PULConfig, base: Backbone, images: ImageList, skipped: list[str], labels: torch.Tensor,
    steps: int, dist: DistContext,
) -> dict[str, Any]:
    """The checkpoint's JSON metadata: the base, every training choice, the data fingerprint."""
    from .. import __version__

    return {
        "format": FORMAT,
        "kind": "pul",
        PIPELINE_CHECK: base.info.is_random,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "git_revision": git_revision(),
        "base": {
            "name": config.base,
            "sha256": base.info.sha256,
            "has_classifier": base.fc is not None,
            "file": Path(base.info.path).name if base.info.path else None,
            "base_metadata_kind": base.info.metadata.get("kind"),
        },
        "images": {
            "source": images.source,
            "count": len(images) - len(skipped),
            "listed": len(images),
            "skipped": len(skipped),
            "skipped_files": list(skipped[:20]),
            "fingerprint_sha256": images.fingerprint,
            "fingerprint_of": "sorted relative paths of the listed images, joined by newlines",
        },
        "labels": {
            "distribution": "uniform",
            "keyed_by": "position in the sorted image list",
            "sha256": labels_digest(labels),
        },
        **config.result_config(),
        "steps": steps,
        "world_size": dist.world_size,
        "loss": "CE(projector, random labels) + kl_weight * T^2 * KL(p_frozen || p_student) at T",
        "kl_distribution": f"base's {base.num_classes}-way fc (student trains its own copy)" if base.fc is not None
        else f"frozen random linear head {base.channels}->{HEADLESS_CLASSES} seeded from (seed, 'head'), shared by both",
        "projector": f"Linear({base.channels},{config.projector_width}) -> ReLU -> Linear({config.projector_width},{config.classes}) on {_pooled(base)}",
        "optimizer": "SGD",
        "lr_schedule": ("lr * (1 + 10 * step / total_steps) ** -0.75" if config.lr_decay else "constant")
        + (f" * min(1, (step + 1) / {config.warmup_steps}) (linear warm-up)" if config.warmup_steps else ""),
        "stability_guard": f"global gradient L2 norm clipped to {config.grad_clip}" if config.grad_clip else "no gradient clipping",
        **precision_record(dist.device, config.precision, config.tf32),
        "bn_mode": "eval (running statistics frozen, affine weights trained) in teacher and student",
        "train_stride": TRAIN_STRIDE,
        "augmentation": f"resize to {resize_side(config.input_size)}x{resize_side(config.input_size)} bilinear, random {config.input_size} crop, random horizontal flip (per-image generator from seed, epoch, index)",
        "unreadable_images": "skipped and counted",
        # Only other bases say so: ResNet50 checkpoints keep the metadata they always had.
        **({} if base.is_resnet50 else {"architecture": base.architecture}),
    }
