"""PUL (Panning through Unstructured Labels): refine a pretrained ResNet50 on random labels.

The seed paper's recipe (DESIGN.md §6): every unlabeled training image gets a fixed random label in
``[0, C)``; a projector of two linear layers on the pooled layer4 features is trained with
cross-entropy on those labels, regularised by ``kl_weight * T^2 * KL(p_frozen || p_student)`` at
temperature ``T`` between the frozen base's and the student's prediction distributions. The
result is a ResNet50 checkpoint (trunk, plus ``fc`` when the base had one) that
``load_backbone("pul:FILE")`` and ``Localizer(backbone="pul:FILE")`` read.

Choices the paper leaves open are constants of :class:`PULConfig` and are written into every
checkpoint's metadata; docs/pul.md explains each. The main ones:

- BatchNorm in eval mode everywhere (running statistics frozen, affine weights trained): teacher
  and student compute the same function at step 0, so the KL term is exactly 0 there, batch size
  does not change the function, and DDP needs no SyncBatchNorm.
- Training at output stride 32 (the standard ResNet50 the weights were trained as); LOST later runs
  the same weights dilated at stride 16.
- Headless bases (``dino``): the prediction distribution is a frozen random linear head
  ``2048 -> 1000`` (seeded) shared by teacher and student.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) training uses DDP (gloo on CPU, nccl on CUDA);
labels, data order and augmentation are pure functions of the seed, every rank computes them
identically, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .backbones import Backbone, load_backbone
from .distributed import DistContext, from_env, join, teardown
from .files import atomic_write
from .precision import fp32_math, precision_record
from .pul_data import (
    BatchList,
    ImageList,
    PULError,
    PULImages,
    ScanImages,
    derive_seed,
    generator,
    labels_digest,
    list_dataset,
    list_folder,
    random_labels,
    rank_batches,
    resize_side,
    steps_per_epoch,
)

FORMAT = "discovery-pul/1"
STATE_FORMAT = "discovery-pul-state/1"
TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
TRAIN_STRIDE = 32
HEADLESS_CLASSES = 1000
DATASETS = ("voc07", "voc12", "coco20k")

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
            many first steps (0: off). See :func:`clip_gradients` and :func:`lr_factor`.
        precision: ``fp32``, or ``bf16`` autocast for the forward passes (GPUs); tf32: let CUDA
            fp32 math use TensorFloat-32 (off: IEEE fp32).
        seed: every random choice (labels, order, augmentation, projector, probe, random head).
        input_size: training crop side in pixels (images are resized to ``round(S*256/224)`` first).
        projector_width: hidden width of the two-layer projector ``2048 -> W -> classes``.
        probe_size: images in the fixed probe batch for the function speed.
        workers: DataLoader decode workers (0: in the main process).
        checkpoint_every: write the resumable state every N steps (and at every epoch end).
        stop_after: stop (with a resumable state) after this many steps in total; for time-boxed jobs.
        resume, overwrite: continue from ``OUT.state.pt`` / replace an existing output.
        log_dynamics: per-step CSV of losses, predicted-class histogram and function speed.
        device: ``cpu``, ``cuda``, ``cuda:N``; under torchrun with CUDA each rank uses ``cuda:LOCAL_RANK``.
        weights_dir: where registry weights live (default: the project's ``weights/``).
        progress: show a tqdm bar (rank 0 only).
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


# --- model ------------------------------------------------------------------------------------


class Projector(nn.Sequential):
    """Two linear layers ``2048 -> width -> classes`` with a ReLU between (pooled features in, logits out)."""

    def __init__(self, classes: int, width: int = 256, features: int = 2048):
        super().__init__(nn.Linear(features, width), nn.ReLU(inplace=True), nn.Linear(width, classes))


class PULStudent(nn.Module):
    """The model under training: ``forward(x (B,3,S,S))`` -> ``(projector logits (B,C), prediction logits (B,K))``.

    ``head`` is the base's 1000-way ``fc`` (trained) or, for a headless base, the frozen random head
    shared with the teacher.
    """

    def __init__(self, trunk: nn.Module, head: nn.Linear, projector: Projector):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.trunk(x).mean(dim=(2, 3))
        return self.projector(pooled), self.head(pooled)


class PULTeacher(nn.Module):
    """The frozen base: ``forward(x)`` -> prediction logits ``(B, K)``."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean(dim=(2, 3)))


def random_head(seed: int, classes: int = HEADLESS_CLASSES, features: int = 2048) -> nn.Linear:
    """The frozen prediction head of a headless base: ``nn.Linear(2048, 1000)`` with PyTorch's
    default init drawn from a generator seeded by ``(seed, "head")``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head"))
        head = nn.Linear(features, classes)
    return head.requires_grad_(False)


def build_models(base: Backbone, classes: int, width: int, seed: int) -> tuple[PULStudent, PULTeacher]:
    """Student and teacher from a loaded (frozen, eval-mode) base.

    Both stay in eval mode for the whole run (BatchNorm uses the base's running statistics), so
    at step 0 they compute bit-identical prediction logits. The student's trunk and ``fc`` are
    trainable copies; the projector is initialised from ``(seed, "projector")``.
    """
    if base.fc is not None:
        teacher_head = base.fc
        student_head = copy.deepcopy(base.fc).requires_grad_(True)
    else:
        teacher_head = student_head = random_head(seed)
    teacher = PULTeacher(base.trunk, teacher_head).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "projector"))
        projector = Projector(classes, width)
    trunk = copy.deepcopy(base.trunk).requires_grad_(True)
    student = PULStudent(trunk, student_head, projector).eval()
    return student, teacher


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (scalar, not scaled by T^2);
    exactly 0 when the logits are equal."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True, reduction="batchmean",
    )


def function_speed(after: torch.Tensor, before: torch.Tensor) -> float:
    """The paper's function speed ``KL(softmax f_{t+1} || softmax f_t)``, mean over the probe batch."""
    return float(F.kl_div(
        F.log_softmax(before.double(), dim=1), F.log_softmax(after.double(), dim=1),
        log_target=True, reduction="batchmean",
    ))


def check_finite(student: nn.Module, step: int, state_file: Path) -> None:
    """Raise :class:`PULError` if any trained weight is NaN or infinite (a diverged run)."""
    with torch.no_grad():
        if not all(bool(torch.isfinite(p).all()) for p in student.parameters()):
            raise PULError(
                f"the weights became non-finite by step {step}; lower --lr "
                f"(the last good state, if any, is {state_file})"
            )


def lr_factor(step: int, total_steps: int, decay: bool, warmup_steps: int = 0) -> float:
    """SHOT's schedule ``(1 + 10 * step / total)^-0.75`` (1 when ``decay`` is off), times the
    linear warm-up ``min(1, (step + 1) / warmup_steps)`` (none when ``warmup_steps`` is 0)."""
    factor = (1 + 10 * step / max(1, total_steps)) ** -0.75 if decay else 1.0
    return factor * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else factor


def clip_gradients(student: nn.Module, max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most ``max_norm`` (0: leave them);
    return the norm before clipping. Under DDP the gradients are already averaged, so every rank
    clips identically. The norm is accumulated in float64, so the scale factor does not depend on
    how many threads summed it (a resumed run in another process must take the same steps)."""
    params = [p for p in student.parameters() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params])
    total = float(torch.linalg.vector_norm(norms))
    if 0 < max_norm < total:
        scale = max_norm / total
        for p in params:
            p.grad.mul_(scale)
    return total


def make_optimizer(student: PULStudent, config: PULConfig) -> torch.optim.SGD:
    """SGD with two groups: trunk + fc at ``lr * trunk_lr_scale``, projector at ``lr``."""
    pretrained = [p for name, p in student.named_parameters() if p.requires_grad and not name.startswith("projector.")]
    groups = [
        {"params": pretrained, "lr": config.lr * config.trunk_lr_scale, "base_lr": config.lr * config.trunk_lr_scale},
        {"params": list(student.projector.parameters()), "lr": config.lr, "base_lr": config.lr},
    ]
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
    )


def resnet_state(student: PULStudent, with_fc: bool) -> dict[str, torch.Tensor]:
    """The student's weights under torchvision ResNet50 key names (``conv1.*`` ... ``layer4.*``,
    plus ``fc.*`` when ``with_fc``), contiguous CPU tensors."""
    state = {}
    for key, value in student.trunk.state_dict().items():
        index, rest = key.split(".", 1)
        state[f"{TRUNK_NAMES[int(index)]}.{rest}"] = value.detach().cpu().contiguous()
    if with_fc:
        for key, value in student.head.state_dict().items():
            state[f"fc.{key}"] = value.detach().cpu().contiguous()
    return state


# --- files ------------------------------------------------------------------------------------


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives: ``OUT.state.pt``."""
    return out.with_name(out.name + ".state.pt")


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


# --- distributed ------------------------------------------------------------------------------


# --- the run ----------------------------------------------------------------------------------


def validate(config: PULConfig, dist: DistContext) -> None:
    """Refuse bad numbers and file conflicts before anything expensive (raises :class:`PULError`,
    ``FileExistsError`` or ``FileNotFoundError``, one line each)."""
    checks = [
        (config.classes >= 2, f"--classes must be at least 2 (got {config.classes}): one class gives a constant loss"),
        (config.epochs >= 1, f"--epochs must be at least 1 (got {config.epochs})"),
        (config.batch_size >= 1, f"--batch-size must be at least 1 (got {config.batch_size})"),
        (config.temperature > 0, f"--temperature must be positive (got {config.temperature})"),
        (config.kl_weight >= 0, f"--kl-weight must be >= 0 (got {config.kl_weight})"),
        (config.lr > 0, f"--lr must be positive (got {config.lr})"),
        (config.grad_clip >= 0, f"--grad-clip must be >= 0 (0: off; got {config.grad_clip})"),
        (config.warmup_steps >= 0, f"--warmup-steps must be >= 0 (0: off; got {config.warmup_steps})"),
        (config.precision in TRAIN_PRECISIONS, f"--precision must be one of {', '.join(TRAIN_PRECISIONS)} (got {config.precision})"),
        (config.input_size >= 32, f"--input-size must be at least 32 pixels (got {config.input_size})"),
        (config.workers >= 0, f"--workers must be >= 0 (got {config.workers})"),
        (config.checkpoint_every >= 1, f"--checkpoint-every must be at least 1 (got {config.checkpoint_every})"),
        (config.stop_after is None or config.stop_after >= 1, f"--stop-after must be at least 1 (got {config.stop_after})"),
        (config.probe_size >= 1, f"probe size must be at least 1 (got {config.probe_size})"),
        (config.batch_size % dist.world_size == 0,
         f"--batch-size {config.batch_size} (the global batch) must be a multiple of the {dist.world_size} processes"),
        ((config.images is None) != (config.dataset is None), "give exactly one of --images DIR or --dataset NAME --root DIR"),
        (config.dataset is None or config.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)} (got {config.dataset})"),
        (config.dataset is None or config.root is not None, "--dataset needs --root DIR"),
        (Path(config.out).suffix == ".safetensors", f"--out must end in .safetensors (got {config.out})"),
    ]
    for ok, message in checks:
        if not ok:
            raise PULError(message)
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    state = state_path(out)
    if config.resume and not state.is_file():
        raise FileNotFoundError(f"nothing to resume: {state} does not exist")
    if state.exists() and not config.resume and not config.overwrite:
        raise FileExistsError(f"{state} is left from an interrupted run; pass --resume to continue it or --overwrite to start over")


def image_list(config: PULConfig) -> ImageList:
    """The run's sorted image list (folder or dataset split)."""
    if config.images is not None:
        return list_folder(config.images)
    return list_dataset(config.dataset, config.root)


def scan(dataset: PULImages, images: ImageList, workers: int, dist: DistContext) -> tuple[list[int], list[str]]:
    """Decode every image once (sharded over ranks); return ``(usable indices, skipped relative paths)``."""
    mine = list(range(dist.rank, len(images), dist.world_size))
    loader = DataLoader(ScanImages(dataset, mine), batch_size=None, num_workers=min(workers, len(mine)))
    bad_here = [i for i, reason in loader if reason]
    bad = sorted(i for part in dist.all_gather(bad_here) for i in part)
    bad_set = set(bad)
    return [i for i in range(len(images)) if i not in bad_set], [images.relative[i] for i in bad]


def _seed_worker(seed: int, worker_id: int) -> None:
    value = derive_seed(seed, "worker", worker_id)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


class DynamicsLog:
    """The ``--log-dynamics`` CSV: ``step, epoch, ce, kl, loss, lr, hist_0..hist_{C-1}, speed``.

    On resume, rows from steps at or after the resume point are dropped first, so the file reads
    as one uninterrupted run.
    """

    def __init__(self, path: Path, classes: int, start_step: int):
        self.path = Path(path)
        self.columns = ["step", "epoch", "ce", "kl", "loss", "lr", *(f"hist_{c}" for c in range(classes)), "speed", "grad_norm"]
        kept: list[list[str]] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
            if rows and rows[0] == self.columns:
                kept = [row for row in rows[1:] if row and int(row[0]) < start_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._fh.flush()

    def write(
        self, step: int, epoch: int, ce: float, kl: float, loss: float, lr: float, hist: list[int], speed: float, grad_norm: float,
    ) -> None:
        self._writer.writerow([
            step, epoch, f"{ce:.9g}", f"{kl:.9g}", f"{loss:.9g}", f"{lr:.9g}", *hist, f"{speed:.9g}", f"{grad_norm:.9g}",
        ])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _device(dist: DistContext) -> torch.device:
    try:
        device = torch.device(dist.device)
    except RuntimeError:
        raise PULError(f"--device {dist.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PULError(f"--device {dist.device}: CUDA is not available here")
    return device


def metadata(
    config: PULConfig, base: Backbone, images: ImageList, skipped: list[str], labels: torch.Tensor,
    steps: int, dist: DistContext,
) -> dict[str, Any]:
    """The checkpoint's JSON metadata: the base, every training choice, the data fingerprint."""
    from . import __version__

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
        "lr_schedule": ("lr * (1 + 10 * step / total_steps) ** -0.75" if config.lr_decay else "constant")
        + (f" * min(1, (step + 1) / {config.warmup_steps}) (linear warm-up)" if config.warmup_steps else ""),
        "stability_guard": f"global gradient L2 norm clipped to {config.grad_clip}" if config.grad_clip else "no gradient clipping",
        **precision_record(dist.device, config.precision, config.tf32),
        "bn_mode": "eval (running statistics frozen, affine weights trained) in teacher and student",
        "train_stride": TRAIN_STRIDE,
        "augmentation": f"resize to {resize_side(config.input_size)}x{resize_side(config.input_size)} bilinear, random {config.input_size} crop, random horizontal flip (per-image generator from seed, epoch, index)",
        "unreadable_images": "skipped and counted",
    }


def train(config: PULConfig, log: Callable[[str], None] | None = None) -> PULResult:
    """Run PUL as configured; return a :class:`PULResult`.

    Writes ``config.out`` (safetensors, torchvision key names, JSON metadata under ``discovery``)
    when all epochs are done, ``OUT.state.pt`` every ``checkpoint_every`` steps and at epoch ends
    (removed once the output is written), and the dynamics CSV if asked. Under torchrun every
    rank calls this; rank 0 writes the files.

    Raises:
        PULError, FileExistsError, FileNotFoundError, discovery.weights.WeightsError: one-line
        user errors (bad options, no images, unloadable base, a resume file from another run).
    """
    dist = from_env(config.device)
    say = (log or (lambda msg: print(msg, file=sys.stderr))) if dist.is_main else (lambda msg: None)
    out = Path(config.out).expanduser()
    config = dataclasses.replace(config, out=out)
    validate(config, dist)
    device = _device(dist)
    images = image_list(config)
    base = load_backbone(config.base, device="cpu", stride=TRAIN_STRIDE, weights_dir=config.weights_dir)
    if base.info.is_random:
        say("note: base 'random' is a pipeline check, not a model")
    started = join(dist)
    try:
        return _train(config, dist, device, images, base, say)
    finally:
        if started:
            teardown(dist)


def _train(config: PULConfig, dist: DistContext, device: torch.device, images: ImageList, base: Backbone, say) -> PULResult:
    out = config.out
    state_file = state_path(out)
    labels = random_labels(len(images), config.classes, config.seed)
    digests = dist.all_gather(labels_digest(labels))
    if len(set(digests)) != 1:
        raise RuntimeError("ranks disagree on the random labels")
    dataset = PULImages(images, labels, config.input_size, base.mean, base.std, config.seed)
    usable, skipped = scan(dataset, images, config.workers, dist)
    if not usable:
        raise PULError(f"none of the {len(images)} images in {images.source} could be read (first: {skipped[0]})")
    if skipped:
        say(f"warning: skipping {len(skipped)} unreadable image(s) of {len(images)} (first: {skipped[0]})")
    expected = {
        **config.result_config(),
        "base_sha256": base.info.sha256,
        "fingerprint": images.fingerprint,
        "skipped": len(skipped),
        "world_size": dist.world_size,
    }

    student, teacher = build_models(base, config.classes, config.projector_width, config.seed)
    autocast = TRAIN_PRECISIONS[config.precision]
    layout = torch.channels_last
    student = student.to(device, memory_format=layout)
    teacher = teacher.to(device, memory_format=layout)
    optimizer = make_optimizer(student, config)
    spe = steps_per_epoch(len(usable), config.batch_size, dist.world_size)
    total_steps = spe * config.epochs
    step = 0
    if config.resume:
        saved = load_state(state_file, expected)
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        step = int(saved["step"])
        say(f"resuming {state_file} at step {step} of {total_steps}")
    elif dist.is_main and config.overwrite:
        state_file.unlink(missing_ok=True)
    dist.barrier()

    model: nn.Module = student
    if dist.active:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    dynamics = probe = before = None
    if config.log_dynamics is not None and dist.is_main:
        dynamics = DynamicsLog(config.log_dynamics, config.classes, step)
        chosen = torch.randperm(len(usable), generator=generator(config.seed, "probe"))[: config.probe_size].tolist()
        probe = torch.stack([dataset[(usable[j], -1)][0] for j in chosen]).to(device, memory_format=layout)
        with torch.no_grad():
            before = student(probe)[0]

    def write_state(at: int) -> None:
        check_finite(student, at, state_file)
        if dist.is_main:
            save_state(state_file, {
                "format": STATE_FORMAT, "config": expected, "step": at, "epoch": at // spe,
                "student": {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "skipped": list(skipped),
            })
        dist.barrier()

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not (dist.is_main and config.progress), dynamic_ncols=True)
    seen, clock = 0, time.perf_counter()
    stopped = False
    try:
        while step < total_steps and not stopped:
            epoch, start = divmod(step, spe)
            batches = rank_batches(usable, config.seed, epoch, config.batch_size, dist.rank, dist.world_size, start)
            loader = DataLoader(
                dataset, batch_sampler=BatchList(batches), num_workers=config.workers,
                worker_init_fn=functools.partial(_seed_worker, derive_seed(config.seed, "workers", epoch, start, dist.rank)),
                generator=generator(config.seed, "loader", epoch), pin_memory=device.type == "cuda",
            )
            for x, y, _ in loader:
                x = x.to(device, non_blocking=True, memory_format=layout)
                y = y.to(device, non_blocking=True)
                factor = lr_factor(step, total_steps, config.lr_decay, config.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                with fp32_math(config.tf32), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    logits, predictions = model(x)
                logits, predictions, teacher_logits = logits.float(), predictions.float(), teacher_logits.float()
                ce = F.cross_entropy(logits, y)
                kl = distill_kl(predictions, teacher_logits, config.temperature)
                loss = ce + config.kl_weight * config.temperature**2 * kl
                bad = dist.all_reduce_sum(torch.isfinite(loss.detach()).logical_not().double().reshape(1))
                if bad.item():
                    raise PULError(
                        f"the loss became non-finite at step {step} (CE {ce.item():.4g}, KL {kl.item():.4g}); "
                        f"lower --lr (the last saved state is {state_file})"
                    )
                optimizer.zero_grad(set_to_none=True)
                with fp32_math(config.tf32):
                    loss.backward()
                grad_norm = clip_gradients(student, config.grad_clip)
                optimizer.step()

                if config.log_dynamics is not None:
                    n = len(y)
                    hist = torch.bincount(logits.detach().argmax(1), minlength=config.classes).double()
                    sums = dist.all_reduce_sum(torch.cat([torch.stack([ce.detach() * n, kl.detach() * n]).double(), hist.to(device)])).cpu()
                    count = float(sums[2:].sum())
                    if dynamics is not None:
                        with torch.no_grad(), fp32_math(config.tf32):
                            after = student(probe)[0]
                        speed = function_speed(after, before)
                        before = after
                        ce_mean, kl_mean = float(sums[0]) / count, float(sums[1]) / count
                        dynamics.write(
                            step, epoch, ce_mean, kl_mean, ce_mean + config.kl_weight * config.temperature**2 * kl_mean,
                            optimizer.param_groups[-1]["lr"], [int(v) for v in sums[2:]], speed, grad_norm,
                        )
                step += 1
                seen += len(y) * dist.world_size
                bar.update(1)
                bar.set_postfix(ce=f"{ce.item():.3f}", kl=f"{kl.item():.2e}", img_s=f"{seen / (time.perf_counter() - clock):.1f}")
                stop = config.stop_after is not None and step >= config.stop_after
                if stop or step % config.checkpoint_every == 0 or step % spe == 0:
                    write_state(step)
                if stop:
                    stopped = step < total_steps
                    break
    finally:
        bar.close()
        if dynamics is not None:
            dynamics.close()

    elapsed = time.perf_counter() - clock
    speed = round(seen / elapsed, 2) if seen and elapsed > 0 else 0.0
    say(f"trained at {speed} images/s ({seen} images in {elapsed:.1f} s, {device}, {config.precision})")
    if stopped:
        say(f"stopped after step {step} of {total_steps}; continue with --resume (state: {state_file})")
        return PULResult(None, state_file, step, total_steps, len(usable), tuple(skipped))
    check_finite(student, step, state_file)
    meta = metadata(config, base, images, skipped, labels, step, dist)
    meta["throughput"] = {"images_per_s": speed, "device": str(device), "of_this_process": "steps run since the last start"}
    if dist.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, resnet_state(student, base.fc is not None), meta)
        state_file.unlink(missing_ok=True)
    dist.barrier()
    return PULResult(out, state_file, step, total_steps, len(usable), tuple(skipped), meta)


# --- plotting ---------------------------------------------------------------------------------


def read_dynamics(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``--log-dynamics`` CSV into column arrays (float64).

    Raises:
        FileNotFoundError, PULError: missing file, or not a dynamics CSV (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    needed = {"step", "ce", "kl", "speed", "hist_0", "hist_1"}
    if not needed <= set(header):
        raise PULError(f"{path}: not a PUL dynamics CSV (needs columns step, ce, kl, hist_0.., speed)")
    if len(rows) < 2:
        raise PULError(f"{path}: no rows to plot")
    try:
        data = np.array([[float(v) for v in row] for row in rows[1:] if row], dtype=np.float64)
    except ValueError as err:
        raise PULError(f"{path}: unreadable value ({err})") from None
    return {name: data[:, j] for j, name in enumerate(header)}


def plot_dynamics(csv_path: str | Path, out: str | Path) -> Path:
    """Draw a dynamics CSV to a PNG: losses, the predicted-class shares per step (the swing
    phenomenon) and the function speed (log scale, with a moving average)."""
    try:
        import matplotlib
    except ImportError:
        raise PULError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_dynamics(csv_path)
    steps = data["step"]
    hist_names = sorted((k for k in data if k.startswith("hist_")), key=lambda k: int(k[5:]))
    hist = np.stack([data[k] for k in hist_names])
    shares = hist / np.maximum(hist.sum(axis=0, keepdims=True), 1)

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    marker = "." if len(steps) < 50 else None
    axes[0].plot(steps, data["ce"], marker=marker, label="cross-entropy")
    axes[0].plot(steps, data["kl"], marker=marker, label="KL(frozen || student) at T")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right")
    axes[1].stackplot(steps, shares, labels=[f"class {k[5:]}" for k in hist_names], step="mid")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("share of batch")
    axes[1].set_title("predicted classes per batch (swing phenomenon)")
    axes[1].legend(loc="upper right", fontsize="small")
    speed = np.maximum(data["speed"], 1e-12)
    axes[2].plot(steps, speed, alpha=0.4, marker=marker, label="KL(f_t+1 || f_t)")
    window = max(1, len(speed) // 20)
    if window > 1:
        smooth = np.convolve(speed, np.ones(window) / window, mode="valid")
        axes[2].plot(steps[window - 1:], smooth, label=f"moving average ({window})")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("function speed")
    axes[2].set_xlabel("step")
    axes[2].legend(loc="upper right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
