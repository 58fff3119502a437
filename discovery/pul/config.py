"""PUL's options (:class:`PULConfig`), its result (:class:`PULResult`) and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distributed import DistContext
from ..splits import DATASETS
from ..training import Control, check_control
from .data import PULError

# Config fields that change the trained weights: a resume file must agree on all of them.
RESULT_FIELDS = (
    "epochs", "classes", "temperature", "kl_weight", "batch_size", "lr", "trunk_lr_scale", "momentum",
    "weight_decay", "nesterov", "lr_decay", "seed", "input_size", "projector_width", "probe_size",
    "grad_clip", "warmup_steps", "precision", "tf32",
)
#: Autocast dtypes for training (fp16 would need a gradient scaler; bf16 does not).
TRAIN_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PULConfig:
    """One PUL run. Exactly one of ``images`` (a folder) or ``dataset`` + ``root`` names the data.

    Attributes (defaults are the documented choices, see docs/pul.md):
        base: backbone name for :func:`discovery.backbones.load_backbone` (``imagenet``,
            ``imagenet-v2``, ``dino``, ``random``, ``pul:PATH`` or a checkpoint path).
        out: the ``.safetensors`` file to write.
        epochs, classes: training length and number of random classes (>= 2).
        temperature, kl_weight: the distillation regulariser ``kl_weight * T^2 * KL``.
        batch_size: the global batch (split evenly across DDP ranks).
        lr: learning rate of the projector; the trunk (and fc) use ``lr * trunk_lr_scale``.
        momentum, weight_decay, nesterov: SGD settings (SHOT's).
        lr_decay: SHOT's schedule ``lr * (1 + 10 p)^-0.75`` with ``p`` = progress in [0, 1]; off: constant.
        grad_clip: the stability guard: the global L2 norm of all gradients is clipped to this
            before each step (0: off). warmup_steps: the learning rate rises linearly over this
            many first steps (0: off). See :func:`~discovery.training.clip_gradients` and
            :func:`~discovery.pul.model.lr_factor`.
        precision: ``fp32``, or ``bf16`` autocast for the forward passes (GPUs); tf32: let CUDA
            fp32 math use TensorFloat-32 (off: IEEE fp32).
        seed: every random choice (labels, order, augmentation, projector, probe, random head).
        input_size: training crop side in pixels (images are resized to ``round(S*256/224)`` first).
        projector_width: hidden width of the two-layer projector ``C -> W -> classes`` (C: the base's channels).
        probe_size: images in the fixed probe batch for the function speed.
        workers: DataLoader decode workers (0: in the main process).
        checkpoint_every: write the resumable state every N steps (and at every epoch end).
        stop_after: stop (with a resumable state) after this many steps in total; for time-boxed jobs.
        resume, overwrite: continue from ``OUT.state.pt`` / replace an existing output.
        log_dynamics: per-step CSV of losses, predicted-class histogram and function speed.
        eval_every: call ``train``'s ``evaluate`` hook every N steps (and after the last); its
            score goes into the dynamics CSV's ``corloc`` column. ``None``: never.
        save_every_epoch: also write ``OUT.epochK.safetensors`` for K = 0 (before the first step)
            .. epochs, each with the projector under :data:`discovery.backbones.PROJECTOR_PREFIX`.
        device: ``cpu``, ``cuda``, ``cuda:N``; under torchrun with CUDA each rank uses ``cuda:LOCAL_RANK``.
        weights_dir: where registry weights live (default: the project's ``weights/``).
        progress: show progress (a bar on a terminal, plain lines in a log: :mod:`discovery.progress`; rank 0 only).
    """

    base: str
    out: Path
    images: Path | None = None
    dataset: str | None = None
    root: Path | None = None
    epochs: int = 3
    classes: int = 3
    temperature: float = 4.0
    kl_weight: float = 1.0
    batch_size: int = 32
    lr: float = 0.01
    trunk_lr_scale: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    nesterov: bool = True
    lr_decay: bool = True
    grad_clip: float = 2.0
    warmup_steps: int = 20
    precision: str = "fp32"
    tf32: bool = False
    seed: int = 0
    input_size: int = 224
    projector_width: int = 256
    probe_size: int = 32
    workers: int = 2
    checkpoint_every: int = 100
    stop_after: int | None = None
    resume: bool = False
    overwrite: bool = False
    log_dynamics: Path | None = None
    eval_every: int | None = None
    save_every_epoch: bool = False
    device: str = "cpu"
    weights_dir: Path | None = None
    progress: bool = True

    def result_config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RESULT_FIELDS}


@dataclass(frozen=True)
class PULResult:
    """What a run produced: ``out`` (``None`` when stopped early), the state file, steps done of
    ``total_steps``, images used and ``skipped`` (relative paths of unreadable images)."""

    out: Path | None
    state: Path
    steps: int
    total_steps: int
    images: int
    skipped: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.out is not None


def validate(config: PULConfig, dist: DistContext) -> None:
    """Refuse bad numbers and file conflicts before anything expensive (raises :class:`PULError`,
    ``FileExistsError`` or ``FileNotFoundError``, one line each)."""
    checks = [
        (bool(config.base), "--backbone is required: the base to refine (e.g. imagenet)"),
        (config.classes >= 2, f"--classes must be at least 2 (got {config.classes}): one class gives a constant loss"),
        (config.epochs >= 1, f"--epochs must be at least 1 (got {config.epochs})"),
        (config.temperature > 0, f"--temperature must be positive (got {config.temperature})"),
        (config.kl_weight >= 0, f"--kl-weight must be >= 0 (got {config.kl_weight})"),
        (config.lr > 0, f"--lr must be positive (got {config.lr})"),
        (config.warmup_steps >= 0, f"--warmup-steps must be >= 0 (0: off; got {config.warmup_steps})"),
        (config.precision in TRAIN_PRECISIONS, f"--precision must be one of {', '.join(TRAIN_PRECISIONS)} (got {config.precision})"),
        (config.input_size >= 32, f"--input-size must be at least 32 pixels (got {config.input_size})"),
        (config.eval_every is None or config.eval_every >= 1, f"--eval-every must be at least 1 (got {config.eval_every})"),
        (config.probe_size >= 1, f"probe size must be at least 1 (got {config.probe_size})"),
        ((config.images is None) != (config.dataset is None), "give exactly one of --images DIR or --dataset NAME --root DIR"),
        (config.dataset is None or config.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)} (got {config.dataset})"),
        (config.dataset is None or config.root is not None, "--dataset needs --root DIR"),
    ]
    for ok, message in checks:
        if not ok:
            raise PULError(message)
    check_control(Control.of(config), dist, PULError)
