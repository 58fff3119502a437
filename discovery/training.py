"""The resumable training loop both trainers run (PUL: :mod:`discovery.pul.train`; LOST+CAD:
:mod:`discovery.cad`), and its parts: seeded batches, the gradient clipper, the diverging-run guard.

:func:`run` does what every trainer does: resume from ``OUT.state.pt`` (:func:`discovery.trainstate.restore`),
wrap the model in DDP under torchrun, draw this rank's batches from the seed, and per step set the
learning rate, take the trainer's loss, refuse a non-finite one on any rank (one line), backward,
:func:`clip_gradients`, the optimiser step; ``OUT.state.pt`` every ``checkpoint_every`` steps and at
``stop_after``, and the finished checkpoint written atomically; progress and the time-left estimate
on stderr (:mod:`discovery.progress`). A :class:`Trainer` supplies the rest; the batches come from
:mod:`discovery.sampling`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .distributed import DistContext, join, teardown
from .progress import Progress
from .sampling import epoch_loader, steps_per_epoch
from .trainstate import check_files, remove_stale_temporaries, restore, rng_state, save_checkpoint, save_state, state_path

Say = Callable[[str], None]


# --- guards --------------------------------------------------------------------------------------


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most ``max_norm`` (0: leave them);
    return the norm before clipping. Under DDP the gradients are already averaged, so every rank
    clips identically. The norm is accumulated in float64, so the scale factor does not depend on
    how many threads summed it (a resumed run in another process must take the same steps)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params])
    total = float(torch.linalg.vector_norm(norms))
    if 0 < max_norm < total:
        scale = max_norm / total
        for p in params:
            p.grad.mul_(scale)
    return total


def check_finite(model: nn.Module, step: int, state_file: Path, error: type[Exception]) -> None:
    """Raise ``error`` (one line) if any weight of ``model`` is NaN or infinite (a diverged run)."""
    with torch.no_grad():
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise error(f"the weights became non-finite by step {step}; lower --lr "
                        f"(the last good state, if any, is {state_file})")


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights and buffers as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def parallel(model: nn.Module, device: torch.device, dist: DistContext) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not dist.active:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# --- the run -------------------------------------------------------------------------------------


def reporter(log: Say | None, dist: DistContext) -> Say:
    """Where a run's messages go: ``log`` (default: stderr) on rank 0, nowhere on the other ranks."""
    if not dist.is_main:
        return lambda message: None
    return log or (lambda message: print(message, file=sys.stderr))


@contextmanager
def joined(dist: DistContext) -> Iterator[None]:
    """The body inside torchrun's process group (joined here unless it already was, and left after)."""
    started = join(dist)
    try:
        yield
    finally:
        if started:
            teardown(dist)


@dataclass(frozen=True)
class Control:
    """The loop's settings: fields both :class:`~discovery.pul.PULConfig` and
    :class:`~discovery.cad.CADConfig` have under these names (see :meth:`of`)."""

    out: Path
    seed: int
    batch_size: int
    grad_clip: float
    workers: int
    checkpoint_every: int
    stop_after: int | None
    resume: bool
    overwrite: bool
    progress: bool

    @classmethod
    def of(cls, config: Any) -> Control:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def check_control(control: Control, dist: DistContext, error: type[Exception]) -> None:
    """Refuse bad loop settings and file conflicts before anything expensive (``error``,
    ``FileExistsError`` or ``FileNotFoundError``, one line each)."""
    checks = [
        (control.batch_size >= 1, f"--batch-size must be at least 1 (got {control.batch_size})"),
        (control.grad_clip >= 0, f"--grad-clip must be >= 0 (0: off; got {control.grad_clip})"),
        (control.workers >= 0, f"--workers must be >= 0 (got {control.workers})"),
        (control.checkpoint_every >= 1, f"--checkpoint-every must be at least 1 (got {control.checkpoint_every})"),
        (control.stop_after is None or control.stop_after >= 1, f"--stop-after must be at least 1 (got {control.stop_after})"),
        (control.batch_size % dist.world_size == 0,
         f"--batch-size {control.batch_size} (the global batch) must be a multiple of the {dist.world_size} processes"),
        (Path(control.out).suffix == ".safetensors", f"--out must end in .safetensors (got {control.out})"),
    ]
    for ok, message in checks:
        if not ok:
            raise error(message)
    check_files(Path(control.out), control.resume, control.overwrite)


@dataclass(frozen=True)
class StepLoss:
    """One step's loss (a scalar tensor), its named terms (for the progress bar and the error of
    a non-finite loss), how many images this rank's batch held, and anything the trainer wants
    back in :meth:`Trainer.after_step`."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    images: int
    extra: Any = None


@dataclass(frozen=True)
class Outcome:
    """What :func:`run` did: ``steps`` done of ``total_steps``; ``out`` the checkpoint (``None``
    when stopped early, the state file then holds the run); ``images`` and ``seconds`` of this
    session; the checkpoint's ``metadata``."""

    out: Path | None
    state: Path
    steps: int
    total_steps: int
    images: int
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.out is not None

    @property
    def images_per_s(self) -> float:
        return round(self.images / self.seconds, 2) if self.images and self.seconds > 0 else 0.0


class Trainer(ABC):
    """What one trainer adds to :func:`run`.

    Set by the subclass before :func:`run`: ``model`` (the module being trained, not DDP-wrapped;
    its ``state_dict`` is the resumable weights), ``optimizer`` (every param group carries a
    ``base_lr`` that :meth:`lr_factor` scales), ``dataset`` (keyed by ``(index, epoch)``),
    ``usable`` (the indices to train on), ``total_steps``, ``expected`` (the settings a state file
    must agree on to be resumed) and ``collate`` (``None``: the default).

    Extension points: :meth:`lr_factor`, :meth:`loss` and :meth:`output` are the trainer's own;
    :meth:`begin`, :meth:`after_step` and :meth:`state` do nothing and :meth:`backward` is a plain
    ``loss.backward()`` unless overridden.
    """

    name: str  #: in messages and state-file checks ("PUL")
    label: str  #: the progress bar's ("pul train")
    unit: str = "step"
    state_format: str
    model_key: str = "model"  #: where the state file keeps the weights
    error: type[Exception]
    #: also write the state at every epoch end (cheap for PUL's epochs; CAD's are a few steps)
    epoch_checkpoints: bool = False

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    usable: list[int]
    total_steps: int
    expected: dict[str, Any]
    collate: Callable | None = None

    @abstractmethod
    def lr_factor(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based) over each group's ``base_lr``."""

    @abstractmethod
    def loss(self, net: nn.Module, batch: Any) -> StepLoss:
        """The loss of one batch through ``net`` (the model, DDP-wrapped under torchrun)."""

    @abstractmethod
    def output(self, done: Outcome) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The finished checkpoint: its tensors and its JSON metadata."""

    def begin(self, step: int) -> None:
        """Called once the run is restored, before step ``step``."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def after_step(self, step: int, result: StepLoss, grad_norm: float) -> None:
        """Called on every rank after update ``step`` (0-based) was applied."""

    def state(self, step: int) -> dict[str, Any]:
        """Entries of the trainer's own for the state written after ``step`` steps."""
        return {}


def run(trainer: Trainer, control: Control, dist: DistContext, device: torch.device, say: Say) -> Outcome:
    """Train (or resume) to ``trainer.total_steps`` or ``control.stop_after``. Every rank calls
    this; rank 0 writes the files. Raises ``trainer.error`` when the loss or the weights become
    non-finite, and :class:`~discovery.trainstate.TrainingStateError` for a foreign state file."""
    model, optimizer, total, unit = trainer.model, trainer.optimizer, trainer.total_steps, trainer.unit
    state_file = state_path(control.out)
    if control.resume and dist.is_main:
        remove_stale_temporaries(control.out)
    step = restore(state_file, trainer.expected, trainer.state_format, trainer.name, trainer.model_key, model,
                   optimizer, control.resume, control.overwrite, dist)
    if control.resume:
        say(f"resuming {state_file} at {unit} {step} of {total}")
    net = parallel(model, device, dist)
    spe = steps_per_epoch(len(trainer.usable), control.batch_size, dist.world_size)
    trainer.begin(step)

    def write_state(at: int) -> None:
        check_finite(model, at, state_file, trainer.error)
        own = trainer.state(at)
        if dist.is_main:
            save_state(state_file, {
                "format": trainer.state_format, "config": trainer.expected, "step": at, "epoch": at // spe,
                trainer.model_key: cpu_state(model), "optimizer": optimizer.state_dict(), "rng": rng_state(), **own,
            })
        dist.barrier()

    bar = Progress(trainer.label, unit, total, step, show=dist.is_main and control.progress, say=say,
                   target=control.stop_after)
    seen, clock, stopped = 0, time.perf_counter(), False
    with bar:
        while step < total and not stopped:
            epoch, start = divmod(step, spe)
            loader = epoch_loader(trainer.dataset, trainer.usable, control.seed, epoch, start, control.batch_size,
                                  control.workers, dist, device, trainer.collate)
            for batch in loader:
                factor = trainer.lr_factor(step)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                result = trainer.loss(net, batch)
                bad = dist.all_reduce_sum(torch.isfinite(result.loss.detach()).logical_not().double().reshape(1))
                if bad.item():
                    terms = ", ".join(f"{k} {v.item():.4g}" for k, v in result.terms.items())
                    raise trainer.error(f"the loss became non-finite at {unit} {step} ({terms}); lower --lr "
                                        f"(the last saved state is {state_file})")
                optimizer.zero_grad(set_to_none=True)
                trainer.backward(result.loss)
                grad_norm = clip_gradients(model, control.grad_clip)
                optimizer.step()
                trainer.after_step(step, result, grad_norm)
                step += 1
                seen += result.images * dist.world_size
                bar.update(1, {**{k: f"{v.item():.3g}" for k, v in result.terms.items()},
                               "img_s": f"{seen / (time.perf_counter() - clock):.1f}"})
                stop = control.stop_after is not None and step >= control.stop_after
                if stop or step % control.checkpoint_every == 0 or (trainer.epoch_checkpoints and step % spe == 0):
                    write_state(step)
                if stop or step >= total:
                    stopped = step < total
                    break

    done = Outcome(None, state_file, step, total, seen, time.perf_counter() - clock)
    say(f"trained at {done.images_per_s} images/s ({seen} images in {done.seconds:.1f} s this session, {device})")
    if stopped:
        say(f"stopped after {unit} {step} of {total}; continue with --resume (state: {state_file})")
        return done
    check_finite(model, step, state_file, trainer.error)
    weights, metadata = trainer.output(done)
    if dist.is_main:
        control.out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(control.out, weights, metadata)
        state_file.unlink(missing_ok=True)
    dist.barrier()
    return dataclasses.replace(done, out=control.out, metadata=metadata)
