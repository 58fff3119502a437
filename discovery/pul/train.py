"""The PUL training run: the data, the networks and one step's loss, run by :func:`discovery.training.run`
(resume, DDP, the loop, the checkpoint at the end)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..backbone import Backbone, check_device
from ..backbones import PROJECTOR_PREFIX, load_backbone
from ..distributed import DistContext, from_env
from ..precision import fp32_math
from ..trainstate import save_checkpoint
from ..sampling import generator, steps_per_epoch
from ..training import Control, Outcome, Say, StepLoss, Trainer, joined, reporter, run
from .checkpoint import STATE_FORMAT, epoch_path, metadata
from .config import TRAIN_PRECISIONS, PULConfig, PULResult, validate
from .data import (
    ImageList,
    PULError,
    PULImages,
    ScanImages,
    labels_digest,
    list_dataset,
    list_folder,
    random_labels,
)
from .dynamics import DynamicsLog
from .model import (
    TRAIN_STRIDE,
    build_models,
    checkpoint_state,
    distill_kl,
    function_speed,
    make_optimizer,
    projector_state,
    student_backbone,
)
from .model import lr_factor as shot_schedule

#: LOST's output stride: the backbone handed to ``evaluate`` runs dilated, as ``eval run`` does.
EVAL_STRIDE = 16

Evaluate = Callable[[int, Backbone], float]


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


def train(config: PULConfig, log: Say | None = None, evaluate: Evaluate | None = None) -> PULResult:
    """Run PUL as configured; return a :class:`PULResult`.

    Writes ``config.out`` (safetensors, torchvision key names, JSON metadata under ``discovery``)
    when all epochs are done, ``OUT.state.pt`` every ``checkpoint_every`` steps and at epoch ends
    (removed once the output is written), ``OUT.epochK.safetensors`` with ``save_every_epoch``, and
    the dynamics CSV if asked. Under torchrun every rank calls this; rank 0 writes the files.

    ``evaluate(steps_done, backbone)``: with ``config.eval_every``, called on rank 0 after every
    ``eval_every``-th update and after the last one with a frozen copy of the student's trunk at
    LOST's stride 16 on the training device; the number it returns (e.g. CorLoc) is written into
    the dynamics CSV's ``corloc`` column on that step's row. The other ranks wait meanwhile. The
    command line builds it from the harness (``discovery.eval.monitor.corloc_hook``).

    Raises:
        PULError, FileExistsError, FileNotFoundError, discovery.weights.WeightsError: one-line
        user errors (bad options, no images, unloadable base, a resume file from another run).
    """
    dist = from_env(config.device)
    say = reporter(log, dist)
    config = dataclasses.replace(config, out=Path(config.out).expanduser())
    validate(config, dist)
    device = check_device(dist.device)
    images = image_list(config)
    base = load_backbone(config.base, device="cpu", stride=TRAIN_STRIDE, weights_dir=config.weights_dir)
    if base.info.is_random:
        origin = "" if base.info.sha256.startswith("random") else " (trained from the 'random' backbone)"
        say(f"note: base {config.base!r} is a pipeline check, not a model{origin}; so is what this run trains")
    with joined(dist):
        trainer = PULTrainer(config, dist, device, images, base, say, evaluate if config.eval_every else None)
        try:
            done = run(trainer, Control.of(config), dist, device, say)
        finally:
            trainer.close()
    return PULResult(done.out, done.state, done.steps, done.total_steps, len(trainer.usable), tuple(trainer.skipped),
                     done.metadata)


def losses(
    model: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, config: PULConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, kl, projector logits)`` of one batch: ``CE + kl_weight * T^2 * KL(p_frozen || p_student)``
    (forward passes under the configured autocast and fp32 math; the losses in float32)."""
    autocast = TRAIN_PRECISIONS[config.precision]
    with fp32_math(config.tf32), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits, predictions = model(x)
    logits, predictions, teacher_logits = logits.float(), predictions.float(), teacher_logits.float()
    ce = F.cross_entropy(logits, y)
    kl = distill_kl(predictions, teacher_logits, config.temperature)
    return ce + config.kl_weight * config.temperature**2 * kl, ce, kl, logits


def batch_sums(ce: torch.Tensor, kl: torch.Tensor, logits: torch.Tensor, classes: int) -> torch.Tensor:
    """``[n·ce, n·kl, hist_0..hist_{C-1}]`` float64 of one rank's batch (summed over ranks by the caller)."""
    n = len(logits)
    hist = torch.bincount(logits.detach().argmax(1), minlength=classes).double()
    return torch.cat([torch.stack([ce.detach() * n, kl.detach() * n]).double(), hist])


class Probe:
    """Rank 0's view of the dynamics: the function speed on a fixed probe batch, and the CSV row."""

    def __init__(self, log: DynamicsLog, student: nn.Module, batch: torch.Tensor):
        self.log, self.student, self.batch = log, student, batch
        with torch.no_grad():
            self.before = student(batch)[0]

    def record(
        self, step: int, epoch: int, sums: torch.Tensor, lr: float, grad_norm: float, config: PULConfig,
        corloc: float | None = None,
    ) -> None:
        sums = sums.cpu()
        with torch.no_grad(), fp32_math(config.tf32):
            after = self.student(self.batch)[0]
        speed = function_speed(after, self.before)
        self.before = after
        count = float(sums[2:].sum())
        ce, kl = float(sums[0]) / count, float(sums[1]) / count
        loss = ce + config.kl_weight * config.temperature**2 * kl
        self.log.write(step, epoch, ce, kl, loss, lr, [int(v) for v in sums[2:]], speed, grad_norm, corloc)


class PULTrainer(Trainer):
    """PUL's part of the loop: random labels, the student against the frozen teacher, the
    dynamics CSV, CorLoc while training, per-epoch checkpoints."""

    name, label, state_format, model_key, error = "PUL", "pul train", STATE_FORMAT, "student", PULError
    epoch_checkpoints = True

    def __init__(self, config: PULConfig, dist: DistContext, device: torch.device, images: ImageList, base: Backbone,
                 say: Say, evaluate: Evaluate | None):
        self.config, self.dist, self.device, self.images, self.base = config, dist, device, images, base
        self.say, self.evaluate, self.probe = say, evaluate, None
        self.labels = random_labels(len(images), config.classes, config.seed)
        if len(set(dist.all_gather(labels_digest(self.labels)))) != 1:
            raise RuntimeError("ranks disagree on the random labels")
        self.dataset = PULImages(images, self.labels, config.input_size, base.mean, base.std, config.seed)
        self.usable, self.skipped = scan(self.dataset, images, config.workers, dist)
        if not self.usable:
            raise PULError(f"none of the {len(images)} images in {images.source} could be read (first: {self.skipped[0]})")
        if self.skipped:
            say(f"warning: skipping {len(self.skipped)} unreadable image(s) of {len(images)} (first: {self.skipped[0]})")
        self.expected = {
            **config.result_config(), "base_sha256": base.info.sha256, "fingerprint": images.fingerprint,
            "skipped": len(self.skipped), "world_size": dist.world_size,
        }
        student, teacher = build_models(base, config.classes, config.projector_width, config.seed)
        self.model = student.to(device, memory_format=torch.channels_last)
        self.teacher = teacher.to(device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config)
        self.steps_per_epoch = steps_per_epoch(len(self.usable), config.batch_size, dist.world_size)
        self.total_steps = self.steps_per_epoch * config.epochs

    def lr_factor(self, step: int) -> float:
        return shot_schedule(step, self.total_steps, self.config.lr_decay, self.config.warmup_steps)

    def loss(self, net: nn.Module, batch: Any) -> StepLoss:
        x, y, _ = batch
        x = x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        loss, ce, kl, logits = losses(net, self.teacher, x, y, self.config)
        return StepLoss(loss, {"ce": ce, "kl": kl}, len(y), extra=logits)

    def backward(self, loss: torch.Tensor) -> None:
        with fp32_math(self.config.tf32):
            loss.backward()

    def begin(self, step: int) -> None:
        config = self.config
        if config.log_dynamics is not None and self.dist.is_main:
            chosen = torch.randperm(len(self.usable), generator=generator(config.seed, "probe"))[: config.probe_size].tolist()
            batch = torch.stack([self.dataset[(self.usable[j], -1)][0] for j in chosen])
            log = DynamicsLog(config.log_dynamics, config.classes, step, self.evaluate is not None)
            self.probe = Probe(log, self.model, batch.to(self.device, memory_format=torch.channels_last))
        if step == 0:
            self.save_epoch(0)

    def after_step(self, step: int, result: StepLoss, grad_norm: float) -> None:
        corloc = self.score(step + 1)
        if self.config.log_dynamics is not None:
            sums = self.dist.all_reduce_sum(batch_sums(result.terms["ce"], result.terms["kl"], result.extra, self.config.classes))
            if self.probe is not None:
                lr = self.optimizer.param_groups[-1]["lr"]
                self.probe.record(step, step // self.steps_per_epoch, sums, lr, grad_norm, self.config, corloc)

    def state(self, step: int) -> dict[str, Any]:
        self.save_epoch(step)
        return {"skipped": list(self.skipped)}

    def output(self, done: Outcome) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = self.metadata(done.steps)
        meta["throughput"] = {"images_per_s": done.images_per_s, "device": str(self.device),
                              "of_this_process": "steps run since the last start"}
        return checkpoint_state(self.model, self.base), meta

    def close(self) -> None:
        if self.probe is not None:
            self.probe.log.close()

    def metadata(self, steps: int) -> dict[str, Any]:
        return metadata(self.config, self.base, self.images, self.skipped, self.labels, steps, self.dist)

    def save_epoch(self, at: int) -> None:
        """``OUT.epochK.safetensors`` after ``at`` steps when that ends epoch K and they are asked for."""
        spe = self.steps_per_epoch
        if self.config.save_every_epoch and self.dist.is_main and at % spe == 0:
            meta = {**self.metadata(at), "epoch": at // spe, "projector_prefix": PROJECTOR_PREFIX}
            weights = {**checkpoint_state(self.model, self.base), **projector_state(self.model)}
            save_checkpoint(epoch_path(self.config.out, at // spe), weights, meta)

    def score(self, done: int) -> float | None:
        """``evaluate``'s number after ``done`` updates when one is due (rank 0), else ``None``."""
        config = self.config
        if self.evaluate is None or not self.dist.is_main or (done % config.eval_every and done != self.total_steps):
            return None
        with torch.random.fork_rng(devices=[]):  # building the copy draws an init: keep the run's RNG untouched
            value = float(self.evaluate(done, student_backbone(self.model, self.base, done, EVAL_STRIDE, self.device)))
        self.say(f"step {done}: CorLoc {value:.2f}")
        return value
