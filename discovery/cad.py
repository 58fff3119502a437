"""LOST+CAD's second stage: train a class-agnostic detector on the boxes of an ``eval run`` folder.

Every image of the run with a box becomes one training image with that one pseudo-box (class
"object"). The detector is :func:`discovery.detector.build_model` around any of our ResNet50
backbones (``load_backbone(base, stride=32)``: PUL checkpoints included; the C4 layout) or any
other CNN (``timm:`` / ``module:``, at ``base_stride``; the single-map layout). Training is SGD with
Detectron2's schedule (linear warm-up from 0.001x, x0.1 at each of ``lr_steps``), random horizontal
flips (a per-image generator from ``(seed, epoch, index)``) and the transform's multi-scale resize.

Resumable: ``OUT.state.pt`` every ``checkpoint_every`` iterations (model, optimizer, RNG states;
read with ``weights_only=True``); ``resume`` continues from it and ends bit-identical to an
uninterrupted run. Distributed: under ``torchrun`` the global batch is split over the ranks (DDP,
gloo on CPU, nccl on CUDA) and rank 0 writes the files. The loop is :func:`discovery.training.run`,
the one PUL runs; :class:`CADTrainer` is CAD's part of it.

Images are decoded as the evaluation harness does (``PIL`` ``convert("RGB")``, no EXIF rotation),
so the pseudo-boxes (original pixels, x1, y1, x2, y2, right/bottom exclusive) fit them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from .backbone import PIPELINE_CHECK, Backbone, check_device, run_is_pipeline_check
from .backbones import load_backbone
from .detector import FORMAT, DetectorConfig, build_model, model_state
from .distributed import DistContext, from_env
from .geometry import hflip_boxes
from .names import parse_backbone_name
from .provenance import git_revision
from .sampling import derive_seed, generator
from .training import Control, Outcome, Say, StepLoss, Trainer, check_control, joined, reporter, run

STATE_FORMAT = "discovery-cad-state/1"
VOC = ("voc07", "voc12")
RESULT_FIELDS = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps", "lr_steps", "grad_clip", "seed", "flip")


class CADError(ValueError):
    """A user mistake in a CAD run (one line)."""


@dataclass(frozen=True)
class CADConfig:
    """One detector training run.

    Attributes:
        run: an ``eval run`` folder (``config.json`` + ``predictions.jsonl``): the pseudo-boxes.
        base: backbone name for :func:`discovery.backbones.load_backbone` (the trunk's init).
        base_stride: output stride a ``timm:`` / ``module:`` base is built with (a ResNet50 is
            always built undilated, stride 32, for the C4 layout).
        out: the ``.safetensors`` to write.
        root: the dataset folder when it moved since the run (default: the run's ``config.json``).
        detector: the architecture (:class:`~discovery.detector.DetectorConfig`).
        iterations: optimizer steps; batch_size: global images per step (split over ranks).
        lr, momentum, weight_decay: SGD; warmup_steps: linear warm-up iterations; lr_steps: x0.1 points.
        grad_clip: clip the gradients' global L2 norm to this (0: no clipping, as the reference;
            :func:`discovery.training.clip_gradients`, as PUL).
        seed: data order, flips, multi-scale draws, new layers' init.
        flip: random horizontal flips.
        workers, checkpoint_every, stop_after, resume, overwrite, device, weights_dir, progress: as
            in :class:`discovery.pul.PULConfig`.
    """

    run: Path
    base: str
    out: Path
    root: Path | None = None
    base_stride: int = 32
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    iterations: int = 10000
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    lr_steps: tuple[int, ...] = ()
    grad_clip: float = 0.0
    seed: int = 0
    flip: bool = True
    workers: int = 2
    checkpoint_every: int = 500
    stop_after: int | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    weights_dir: Path | None = None
    progress: bool = True

    def result_config(self) -> dict[str, Any]:
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in RESULT_FIELDS}


@dataclass(frozen=True)
class PseudoBoxes:
    """The training set read from a run folder: image paths and one box ``(4,)`` each, plus what
    identifies it (the run's config and the sha256 of its files)."""

    paths: tuple[Path, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    run_config: dict[str, Any]
    config_sha256: str
    predictions_sha256: str


def image_path(dataset: str, root: Path, image_id: str) -> Path:
    """Where the harness read ``image_id`` from: ``root`` is the run's resolved dataset folder
    (``VOC2007``-like for VOC, the COCO folder for COCO20k)."""
    if dataset in VOC:
        return root / "JPEGImages" / f"{image_id}.jpg"
    name = f"COCO_train2014_{int(image_id):012d}.jpg"
    for folder in (root / "train2014", root / "images" / "train2014"):
        if (folder / name).is_file():
            return folder / name
    return root / "train2014" / name


class RunRecords(Protocol):
    """What LOST+CAD reads of an ``eval run`` folder (the harness's ``RunFolder.read()`` gives it):
    its config, the resolved dataset folder, the prediction records by image id, the files' hashes."""

    config: dict[str, Any]
    records: dict[str, dict]
    config_sha256: str
    predictions_sha256: str

    @property
    def dataset(self) -> str: ...

    @property
    def root(self) -> Path: ...


def pseudo_boxes(run: RunRecords, root: Path | None = None) -> PseudoBoxes:
    """The training set of a run's predictions (images without a box are left out); ``root``: the
    dataset folder, if it moved since the run."""
    root = Path(root).expanduser() if root is not None else run.root
    paths, boxes = [], []
    for image_id, record in run.records.items():
        box = record.get("box")
        if box is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        paths.append(image_path(run.dataset, root, image_id))
        boxes.append((x1, y1, x2, y2))
    if not paths:
        raise CADError("the run's predictions hold no boxes to train on")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CADError(f"{len(missing)} image(s) of the run are missing (first: {missing[0]}); pass --root if the dataset moved")
    return PseudoBoxes(tuple(paths), tuple(boxes), run.config, run.config_sha256, run.predictions_sha256)


class PseudoBoxImages(Dataset):
    """``dataset[(index, epoch)]`` → ``(image (3, H, W) float in [0, 1], target)`` with
    ``target = {"boxes": (1, 4) float32, "labels": (1,) int64 ones}``, flipped or not by a
    generator of ``(seed, "flip", epoch, index)``."""

    def __init__(self, data: PseudoBoxes, seed: int, flip: bool):
        self.paths, self.boxes, self.seed, self.flip = data.paths, data.boxes, seed, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, epoch = key
        with Image.open(self.paths[index]) as img:
            rgb = np.array(img.convert("RGB"))
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
        box = torch.tensor([self.boxes[index]], dtype=torch.float32)
        flipped = self.flip and bool(torch.rand(1, generator=generator(self.seed, "flip", epoch, index)) < 0.5)
        if flipped:
            image, box = image.flip(-1), hflip_boxes(box, image.shape[-1])
        return image, {"boxes": box, "labels": torch.ones(1, dtype=torch.int64)}


def _as_list(batch):
    return batch


def lr_factor(step: int, warmup_steps: int, lr_steps: tuple[int, ...]) -> float:
    """Detectron2's WarmupMultiStepLR: ``0.1 ** (steps passed)`` times a linear ramp from 0.001 to 1
    over the first ``warmup_steps`` iterations."""
    factor = 0.1 ** sum(step >= s for s in lr_steps)
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= 0.001 * (1 - alpha) + alpha
    return factor


def validate(config: CADConfig, dist: DistContext) -> None:
    """Refuse bad numbers and file conflicts before anything expensive (one line each)."""
    checks = [
        (bool(config.base), "--backbone is required: the trunk's initialisation (e.g. imagenet)"),
        (config.iterations >= 1, f"--iterations must be at least 1 (got {config.iterations})"),
        (config.lr > 0, f"--lr must be positive (got {config.lr})"),
        (config.warmup_steps >= 0, f"--warmup-steps must be >= 0 (got {config.warmup_steps})"),
        (config.base_stride >= 1, f"--base-stride must be at least 1 (got {config.base_stride})"),
    ]
    for ok, message in checks:
        if not ok:
            raise CADError(message)
    check_control(Control.of(config), dist, CADError)


def metadata(config: CADConfig, base, data: PseudoBoxes, steps: int, dist: DistContext) -> dict[str, Any]:
    """The checkpoint's JSON metadata (everything :class:`~discovery.detector.Detector` needs, and
    where the pseudo-boxes and the initialisation came from)."""
    from . import __version__

    return {
        "format": FORMAT,
        "kind": "cad",
        PIPELINE_CHECK: base.info.is_random or run_is_pipeline_check(data.run_config),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "git_revision": git_revision(),
        "detector": config.detector.to_json(),
        "base": {"name": config.base, "sha256": base.info.sha256, "mean": list(base.mean), "std": list(base.std),
                 "stride": base.stride},
        "pseudo_boxes": {
            "run": str(Path(config.run).resolve()),
            "run_config": data.run_config,
            "run_config_sha256": data.config_sha256,
            "predictions_sha256": data.predictions_sha256,
            "images": len(data.paths),
        },
        **config.result_config(),
        "steps": steps,
        "world_size": dist.world_size,
        "optimizer": "SGD, Detectron2 WarmupMultiStepLR (warm-up factor 0.001, x0.1 at lr_steps)",
    }


def pipeline_note(base: Backbone, data: PseudoBoxes) -> str | None:
    """The note of a run whose detector will be a pipeline check (its base or its pseudo-boxes'
    run descends from the ``random`` backbone), else ``None``."""
    if base.info.is_random:
        origin = "" if base.info.sha256.startswith("random") else " (trained from the 'random' backbone)"
        return f"note: base {base.info.name!r} is a pipeline check, not a model{origin}; so is the detector"
    if run_is_pipeline_check(data.run_config):
        return "note: the pseudo-boxes come from a pipeline check (the 'random' backbone), not a model; so is the detector"
    return None


def train(config: CADConfig, data: PseudoBoxes, log: Say | None = None) -> Outcome:
    """Train (or resume) on ``data`` (:func:`pseudo_boxes` of ``config.run``) as configured; returns
    the loop's :class:`~discovery.training.Outcome`. Under torchrun every rank calls this. Raises :class:`CADError`, ``FileExistsError``, ``FileNotFoundError`` or
    ``WeightsError`` (one line) for user mistakes."""
    dist = from_env(config.device)
    say = reporter(log, dist)
    config = dataclasses.replace(config, out=Path(config.out).expanduser())
    validate(config, dist)
    device = check_device(dist.device)
    external = parse_backbone_name(config.base).is_external
    base = load_backbone(config.base, device="cpu", stride=config.base_stride if external else 32, weights_dir=config.weights_dir)
    # a ResNet50 gets the reference's C4 layout; any other CNN has no layer4 to split off
    config = dataclasses.replace(config, detector=dataclasses.replace(config.detector, layout="c4" if base.is_resnet50 else "single"))
    note = pipeline_note(base, data)
    if note:
        say(note)
    with joined(dist):
        return run(CADTrainer(config, dist, device, data, base), Control.of(config), dist, device, say)


class CADTrainer(Trainer):
    """CAD's part of the loop: the detector around the base's trunk, SGD on its losses."""

    name, label, unit, state_format, error = "CAD", "cad train", "iteration", STATE_FORMAT, CADError
    collate = staticmethod(_as_list)

    def __init__(self, config: CADConfig, dist: DistContext, device: torch.device, data: PseudoBoxes, base):
        self.config, self.dist, self.device, self.data, self.base = config, dist, device, data, base
        self.expected = {
            **config.result_config(), "detector": config.detector.to_json(), "base_sha256": base.info.sha256,
            "predictions_sha256": data.predictions_sha256, "world_size": dist.world_size,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "init"))
            model = build_model(base.trunk, base.mean, base.std, config.detector, channels=base.channels)
        if config.detector.norm == "sync" and dist.active and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD([{"params": params, "base_lr": config.lr}], lr=config.lr,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        torch.manual_seed(derive_seed(config.seed, "train"))  # the transform's multi-scale draws
        self.dataset = PseudoBoxImages(data, config.seed, config.flip)
        self.usable = list(range(len(self.dataset)))
        self.total_steps = config.iterations

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.config.warmup_steps, self.config.lr_steps)

    def loss(self, net: nn.Module, batch: Any) -> StepLoss:
        images = [image.to(self.device, non_blocking=True) for image, _ in batch]
        targets = [{k: v.to(self.device) for k, v in target.items()} for _, target in batch]
        terms = net(images, targets)
        return StepLoss(sum(terms.values()), terms, len(images))

    def output(self, done: Outcome) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return model_state(self.model), metadata(self.config, self.base, self.data, done.steps, self.dist)
