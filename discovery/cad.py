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
gloo on CPU, nccl on CUDA) and rank 0 writes the files.

Images are decoded as the evaluation harness does (``PIL`` ``convert("RGB")``, no EXIF rotation),
so the pseudo-boxes (original pixels, x1, y1, x2, y2, right/bottom exclusive) fit them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .backbones import check_device, load_backbone
from .detector import FORMAT, DetectorConfig, build_model, model_state
from .distributed import DistContext, from_env, join, teardown
from .pul.data import BatchList, derive_seed, generator, rank_batches, steps_per_epoch
from .trainstate import (
    parallel,
    restore,
    rng_state,
    save_checkpoint,
    save_state,
    state_path,
)
from .weights import parse_backbone_name, sha256_file

STATE_FORMAT = "discovery-cad-state/1"
VOC = ("voc07", "voc12")
RESULT_FIELDS = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "warmup", "lr_steps", "clip_grad", "seed", "flip")


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
        lr, momentum, weight_decay: SGD; warmup: linear warm-up iterations; lr_steps: x0.1 points.
        clip_grad: clip the gradients' global L2 norm to this (``None``: no clipping, as the reference).
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
    warmup: int = 100
    lr_steps: tuple[int, ...] = ()
    clip_grad: float | None = None
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


@dataclass(frozen=True)
class CADResult:
    """``out`` (``None`` when stopped early), the state file, iterations done of ``iterations``."""

    out: Path | None
    state: Path
    steps: int
    iterations: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.out is not None


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


def read_pseudo_boxes(run: Path, root: Path | None = None) -> PseudoBoxes:
    """The boxes of an ``eval run`` folder (images without a box are left out)."""
    run = Path(run)
    config_file, predictions = run / "config.json", run / "predictions.jsonl"
    for needed in (config_file, predictions):
        if not needed.is_file():
            raise CADError(f"{run} is not an `eval run` folder (no {needed.name})")
    try:
        config = json.loads(config_file.read_text())
        dataset, stored_root = config["dataset"], Path(config["root"])
    except (ValueError, KeyError, TypeError) as err:
        raise CADError(f"{config_file}: not a run config ({err})") from None
    root = Path(root).expanduser() if root is not None else stored_root
    paths, boxes = [], []
    for number, line in enumerate(predictions.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image_id, box = str(record["image_id"]), record.get("box")
        except (ValueError, KeyError, TypeError):
            continue  # a torn line, as the harness's reader drops it
        if box is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        paths.append(image_path(dataset, root, image_id))
        boxes.append((x1, y1, x2, y2))
    if not paths:
        raise CADError(f"{predictions} holds no boxes to train on")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CADError(f"{len(missing)} image(s) of the run are missing (first: {missing[0]}); pass --root if the dataset moved")
    return PseudoBoxes(tuple(paths), tuple(boxes), config, sha256_file(config_file), sha256_file(predictions))


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
            width = image.shape[-1]
            image = image.flip(-1)
            box = torch.stack([width - box[:, 2], box[:, 1], width - box[:, 0], box[:, 3]], dim=1)
        return image, {"boxes": box, "labels": torch.ones(1, dtype=torch.int64)}


def _as_list(batch):
    return batch


def lr_factor(step: int, warmup: int, lr_steps: tuple[int, ...]) -> float:
    """Detectron2's WarmupMultiStepLR: ``0.1 ** (steps passed)`` times a linear ramp from 0.001 to 1
    over the first ``warmup`` iterations."""
    factor = 0.1 ** sum(step >= s for s in lr_steps)
    if step < warmup:
        alpha = step / warmup
        factor *= 0.001 * (1 - alpha) + alpha
    return factor


def validate(config: CADConfig, dist: DistContext) -> None:
    """Refuse bad numbers and file conflicts before anything expensive (one line each)."""
    checks = [
        (config.iterations >= 1, f"--iterations must be at least 1 (got {config.iterations})"),
        (config.batch_size >= 1, f"--batch-size must be at least 1 (got {config.batch_size})"),
        (config.lr > 0, f"--lr must be positive (got {config.lr})"),
        (config.warmup >= 0, f"--warmup must be >= 0 (got {config.warmup})"),
        (config.clip_grad is None or config.clip_grad > 0, f"--clip-grad must be positive (got {config.clip_grad})"),
        (config.workers >= 0, f"--workers must be >= 0 (got {config.workers})"),
        (config.base_stride >= 1, f"--base-stride must be at least 1 (got {config.base_stride})"),
        (config.checkpoint_every >= 1, f"--checkpoint-every must be at least 1 (got {config.checkpoint_every})"),
        (config.stop_after is None or config.stop_after >= 1, f"--stop-after must be at least 1 (got {config.stop_after})"),
        (config.batch_size % dist.world_size == 0,
         f"--batch-size {config.batch_size} (the global batch) must be a multiple of the {dist.world_size} processes"),
        (Path(config.out).suffix == ".safetensors", f"--out must end in .safetensors (got {config.out})"),
    ]
    for ok, message in checks:
        if not ok:
            raise CADError(message)
    out, state = Path(config.out), state_path(Path(config.out))
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if config.resume and not state.is_file():
        raise FileNotFoundError(f"nothing to resume: {state} does not exist")
    if state.exists() and not config.resume and not config.overwrite:
        raise FileExistsError(f"{state} is left from an interrupted run; pass --resume to continue it or --overwrite to start over")


def metadata(config: CADConfig, base, data: PseudoBoxes, steps: int, dist: DistContext) -> dict[str, Any]:
    """The checkpoint's JSON metadata (everything :class:`~discovery.detector.Detector` needs, and
    where the pseudo-boxes and the initialisation came from)."""
    from . import __version__

    return {
        "format": FORMAT,
        "kind": "cad",
        "library_version": __version__,
        "torch_version": torch.__version__,
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


def train(config: CADConfig, log: Callable[[str], None] | None = None) -> CADResult:
    """Train (or resume) as configured; returns a :class:`CADResult`. Under torchrun every rank
    calls this. Raises :class:`CADError`, ``FileExistsError``, ``FileNotFoundError`` or
    ``WeightsError`` (one line) for user mistakes."""
    dist = from_env(config.device)
    say = (log or (lambda msg: print(msg, file=sys.stderr))) if dist.is_main else (lambda msg: None)
    config = dataclasses.replace(config, out=Path(config.out).expanduser())
    validate(config, dist)
    device = check_device(dist.device)
    data = read_pseudo_boxes(config.run, config.root)
    external = parse_backbone_name(config.base).is_external
    base = load_backbone(config.base, device="cpu", stride=config.base_stride if external else 32, weights_dir=config.weights_dir)
    # a ResNet50 gets the reference's C4 layout; any other CNN has no layer4 to split off
    config = dataclasses.replace(config, detector=dataclasses.replace(config.detector, layout="c4" if base.is_resnet50 else "single"))
    if base.info.is_random:
        say("note: base 'random' is a pipeline check, not a model")
    started = join(dist)
    try:
        return _train(config, dist, device, data, base, say)
    finally:
        if started:
            teardown(dist)


def _train(config: CADConfig, dist: DistContext, device: torch.device, data: PseudoBoxes, base, say) -> CADResult:
    out, state_file = config.out, state_path(config.out)
    expected = {
        **config.result_config(), "detector": config.detector.to_json(), "base_sha256": base.info.sha256,
        "predictions_sha256": data.predictions_sha256, "world_size": dist.world_size,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = build_model(base.trunk, base.mean, base.std, config.detector)
    if config.detector.norm == "sync" and dist.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    torch.manual_seed(derive_seed(config.seed, "train"))  # the transform's multi-scale draws
    step = restore(state_file, expected, STATE_FORMAT, "CAD", "model", model, optimizer, config.resume, config.overwrite, dist)
    if config.resume:
        say(f"resuming {state_file} at iteration {step} of {config.iterations}")
    net = parallel(model, device, dist)

    dataset = PseudoBoxImages(data, config.seed, config.flip)
    usable = list(range(len(dataset)))
    spe = steps_per_epoch(len(usable), config.batch_size, dist.world_size)

    def write_state(at: int) -> None:
        if dist.is_main:
            save_state(state_file, {
                "format": STATE_FORMAT, "config": expected, "step": at, "model": model_state(model),
                "optimizer": optimizer.state_dict(), "rng": rng_state(),
            })
        dist.barrier()

    from tqdm import tqdm

    bar = tqdm(total=config.iterations, initial=step, unit="it", disable=not (dist.is_main and config.progress), dynamic_ncols=True)
    seen, clock, stopped = 0, time.perf_counter(), False
    try:
        while step < config.iterations and not stopped:
            epoch, start = divmod(step, spe)
            batches = rank_batches(usable, config.seed, epoch, config.batch_size, dist.rank, dist.world_size, start)
            loader = DataLoader(dataset, batch_sampler=BatchList(batches), num_workers=config.workers,
                                collate_fn=_as_list, pin_memory=device.type == "cuda",
                                generator=generator(config.seed, "loader", epoch, start))
            for batch in loader:
                images = [image.to(device, non_blocking=True) for image, _ in batch]
                targets = [{k: v.to(device) for k, v in target.items()} for _, target in batch]
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(step, config.warmup, config.lr_steps)
                losses = net(images, targets)
                loss = sum(losses.values())
                bad = dist.all_reduce_sum(torch.isfinite(loss.detach()).logical_not().double().reshape(1))
                if bad.item():
                    parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                    raise CADError(f"the loss became non-finite at iteration {step} ({parts}); lower --lr "
                                   f"(the last saved state is {state_file})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
                optimizer.step()
                step += 1
                seen += len(images) * dist.world_size
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - clock):.2f}")
                stop = config.stop_after is not None and step >= config.stop_after
                if stop or step % config.checkpoint_every == 0:
                    write_state(step)
                if stop or step >= config.iterations:
                    stopped = stop and step < config.iterations
                    break
    finally:
        bar.close()

    if stopped:
        say(f"stopped after iteration {step} of {config.iterations}; continue with --resume (state: {state_file})")
        return CADResult(None, state_file, step, config.iterations)
    elapsed = time.perf_counter() - clock
    say(f"trained {step} iterations, {seen / elapsed:.2f} images/s over {elapsed:.1f} s this session")
    meta = metadata(config, base, data, step, dist)
    if dist.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, model_state(model), meta)
        state_file.unlink(missing_ok=True)
    dist.barrier()
    return CADResult(out, state_file, step, config.iterations, meta)

