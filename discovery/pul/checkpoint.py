"""PUL's files: the safetensors checkpoint with its metadata (provenance), and the resumable training state."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..files import atomic_write
from .data import PULError, labels_digest, resize_side
from .model import HEADLESS_CLASSES, TRAIN_STRIDE

if TYPE_CHECKING:
    from ..backbones import Backbone
    from ..distributed import DistContext
    from .config import PULConfig
    from .data import ImageList

FORMAT = "discovery-pul/1"
STATE_FORMAT = "discovery-pul-state/1"


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives: ``OUT.state.pt``."""
    return out.with_name(out.name + ".state.pt")


def epoch_path(out: Path, epoch: int) -> Path:
    """Where ``--save-every-epoch`` writes the weights after ``epoch`` epochs: ``OUT.epochK.safetensors``
    (``K = 0``: before the first step)."""
    return out.with_name(f"{out.stem}.epoch{epoch}{out.suffix}")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``tensors`` as safetensors with ``metadata`` as JSON under the header key ``discovery``
    (atomically: a temporary file, then ``os.replace``)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"discovery": json.dumps(metadata, sort_keys=True)}))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors / numbers / strings / lists, atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` and check it belongs to this run.

    Raises:
        PULError: unreadable, or written for a different configuration (names the first difference).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PULError(f"{path}: not a readable PUL training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise PULError(f"{path}: not a PUL training state")
    saved = state.get("config", {})
    for key in expected:
        if saved.get(key) != expected[key]:
            raise PULError(
                f"{path} was written by a different run ({key}: {saved.get(key)!r} there, {expected[key]!r} now); "
                "use the same options, or --overwrite to start over"
            )
    return state


def rng_state() -> dict[str, Any]:
    """torch / numpy / random generator states as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    np.random.set_state(("MT19937", saved["numpy"].numpy().astype(np.uint32), saved["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in saved["python"].tolist()), None))


def metadata(
    config: PULConfig, base: Backbone, images: ImageList, skipped: list[str], labels: torch.Tensor,
    steps: int, dist: DistContext,
) -> dict[str, Any]:
    """The checkpoint's JSON metadata: the base, every training choice, the data fingerprint."""
    from .. import __version__

    return {
        "format": FORMAT,
        "kind": "pul",
        "library_version": __version__,
        "torch_version": torch.__version__,
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
        "kl_distribution": "base's 1000-way fc (student trains its own copy)" if base.fc is not None
        else f"frozen random linear head 2048->{HEADLESS_CLASSES} seeded from (seed, 'head'), shared by both",
        "projector": f"Linear(2048,{config.projector_width}) -> ReLU -> Linear({config.projector_width},{config.classes}) on global-average-pooled layer4",
        "optimizer": "SGD",
        "lr_schedule": "lr * (1 + 10 * step / total_steps) ** -0.75" if config.lr_decay else "constant",
        "bn_mode": "eval (running statistics frozen, affine weights trained) in teacher and student",
        "train_stride": TRAIN_STRIDE,
        "augmentation": f"resize to {resize_side(config.input_size)}x{resize_side(config.input_size)} bilinear, random {config.input_size} crop, random horizontal flip (per-image generator from seed, epoch, index)",
        "unreadable_images": "skipped and counted",
    }
