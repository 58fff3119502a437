"""The PUL training run: data, resume, DDP, the optimisation loop, and the checkpoint at the end."""

from __future__ import annotations

import dataclasses
import functools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import PROJECTOR_PREFIX, Backbone, check_device, load_backbone
from ..distributed import DistContext, from_env, join, teardown
from ..precision import fp32_math
from ..trainstate import (
    parallel,
    restore,
    rng_state,
    save_checkpoint,
    save_state,
    state_path,
)
from .checkpoint import STATE_FORMAT, epoch_path, metadata
from .config import TRAIN_PRECISIONS, PULConfig, PULResult, validate
from .data import (
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
    steps_per_epoch,
)
from .dynamics import DynamicsLog
from .model import (
    TRAIN_STRIDE,
    build_models,
    check_finite,
    checkpoint_state,
    clip_gradients,
    distill_kl,
    function_speed,
    lr_factor,
    make_optimizer,
    projector_state,
    student_backbone,
)

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


def _seed_worker(seed: int, worker_id: int) -> None:
    value = derive_seed(seed, "worker", worker_id)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def train(config: PULConfig, log: Callable[[str], None] | None = None, evaluate: Evaluate | None = None) -> PULResult:
    """Run PUL as configured; return a :class:`PULResult`.

    Writes ``config.out`` (safetensors, torchvision key names, JSON metadata under ``discovery``)
    when all epochs are done, ``OUT.state.pt`` every ``checkpoint_every`` steps and at epoch ends
    (removed once the output is written), ``OUT.epochK.safetensors`` with ``save_every_epoch``, and
    the dynamics CSV if asked. Under torchrun every rank calls this; rank 0 writes the files.

    ``evaluate(steps_done, backbone)``: with ``config.eval_every``, called on rank 0 after every
    ``eval_every``-th update and after the last one with a frozen copy of the student's trunk at
    LOST's stride 16 on the training device; the number it returns (e.g. CorLoc) is written into
    the dynamics CSV's ``corloc`` column on that step's row. The other ranks wait meanwhile.

    Raises:
        PULError, FileExistsError, FileNotFoundError, discovery.weights.WeightsError: one-line
        user errors (bad options, no images, unloadable base, a resume file from another run).
    """
    dist = from_env(config.device)
    say = (log or (lambda msg: print(msg, file=sys.stderr))) if dist.is_main else (lambda msg: None)
    out = Path(config.out).expanduser()
    config = dataclasses.replace(config, out=out)
    validate(config, dist)
    device = check_device(dist.device)
    images = image_list(config)
    base = load_backbone(config.base, device="cpu", stride=TRAIN_STRIDE, weights_dir=config.weights_dir)
    if base.info.is_random:
        say("note: base 'random' is a pipeline check, not a model")
    started = join(dist)
    try:
        return _train(config, dist, device, images, base, say, evaluate if config.eval_every else None)
    finally:
        if started:
            teardown(dist)


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


def _train(
    config: PULConfig, dist: DistContext, device: torch.device, images: ImageList, base: Backbone, say,
    evaluate: Evaluate | None,
) -> PULResult:
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
    layout = torch.channels_last
    student = student.to(device, memory_format=layout)
    teacher = teacher.to(device, memory_format=layout)
    optimizer = make_optimizer(student, config)
    spe = steps_per_epoch(len(usable), config.batch_size, dist.world_size)
    total_steps = spe * config.epochs
    step = restore(state_file, expected, STATE_FORMAT, "PUL", "student", student, optimizer, config.resume, config.overwrite, dist)
    if config.resume:
        say(f"resuming {state_file} at step {step} of {total_steps}")
    model = parallel(student, device, dist)

    probe = None
    if config.log_dynamics is not None and dist.is_main:
        chosen = torch.randperm(len(usable), generator=generator(config.seed, "probe"))[: config.probe_size].tolist()
        batch = torch.stack([dataset[(usable[j], -1)][0] for j in chosen]).to(device, memory_format=layout)
        probe = Probe(DynamicsLog(config.log_dynamics, config.classes, step, evaluate is not None), student, batch)

    def save_epoch(at: int) -> None:
        if config.save_every_epoch and dist.is_main and at % spe == 0:
            meta = {**metadata(config, base, images, skipped, labels, at, dist), "epoch": at // spe, "projector_prefix": PROJECTOR_PREFIX}
            weights = {**checkpoint_state(student, base), **projector_state(student)}
            save_checkpoint(epoch_path(out, at // spe), weights, meta)

    def write_state(at: int) -> None:
        check_finite(student, at, state_file)
        save_epoch(at)
        if dist.is_main:
            save_state(state_file, {
                "format": STATE_FORMAT, "config": expected, "step": at, "epoch": at // spe,
                "student": {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "skipped": list(skipped),
            })
        dist.barrier()

    def score(done: int) -> float | None:
        """``evaluate``'s number after ``done`` updates when one is due (rank 0), else ``None``."""
        if evaluate is None or not dist.is_main or (done % config.eval_every and done != total_steps):
            return None
        with torch.random.fork_rng(devices=[]):  # building the copy draws an init: keep the run's RNG untouched
            value = float(evaluate(done, student_backbone(student, base, done, EVAL_STRIDE, device)))
        say(f"step {done}: CorLoc {value:.2f}")
        return value

    if step == 0:
        save_epoch(0)

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
                loss, ce, kl, logits = losses(model, teacher, x, y, config)
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

                corloc = score(step + 1)
                if config.log_dynamics is not None:
                    sums = dist.all_reduce_sum(batch_sums(ce, kl, logits, config.classes))
                    if probe is not None:
                        probe.record(step, epoch, sums, optimizer.param_groups[-1]["lr"], grad_norm, config, corloc)
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
        if probe is not None:
            probe.log.close()

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
        save_checkpoint(out, checkpoint_state(student, base), meta)
        state_file.unlink(missing_ok=True)
    dist.barrier()
    return PULResult(out, state_file, step, total_steps, len(usable), tuple(skipped), meta)
