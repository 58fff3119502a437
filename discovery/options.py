"""Every command-line option that more than one command takes, defined once: its name, help text
and default, plus the dataclass-from-arguments step every command uses to build its config.

Commands compose these groups (``add_model``, ``add_training_control``...) and add only what is
theirs. Renamed options keep their old spelling as a hidden alias (:func:`add_alias`) that still
works and prints a one-line note naming the new spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, TypeVar

from .defaults import DEFAULT_TAU, STRIDES, VIT_FEATURES
from .download import TIMEOUT_HELP
from .names import backbone_names

T = TypeVar("T")

DEFAULT_STRIDE = 16
WEIGHTS_DIR_HELP = (
    "folder of weights files (default: $DISCOVERY_WEIGHTS_DIR, else weights/ when run from a "
    "checkout, else the torch hub checkpoints folder; `discovery weights path NAME` prints it)"
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are one line (``error: discovery locate: argument --k: ...``),
    like every other user error of the toolkit; its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _Alias(argparse.Action):
    """An old spelling of a renamed option: stores into the new option's ``dest`` and says so once."""

    def __init__(self, option_strings, dest, new: str, flag: bool = False, **kwargs):
        self.new, self.flag = new, flag
        super().__init__(option_strings, dest, nargs=0 if flag else None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new} (the old spelling goes in a later release)", file=sys.stderr)
        setattr(namespace, self.dest, True if self.flag else values)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, *, type=None, flag: bool = False) -> None:
    """Accept ``old`` as a hidden spelling of the option ``new`` (same destination)."""
    dest = new.lstrip("-").replace("-", "_")
    kwargs: dict[str, Any] = {} if flag or type is None else {"type": type}
    parser.add_argument(old, dest=dest, action=_Alias, new=new, flag=flag, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_backbone(parser: argparse.ArgumentParser, default: str | None = "imagenet", *, old: str | None = None,
                 what: str = "") -> None:
    """``--backbone NAME``; ``default=None``: required (checked by the command's config, since
    argparse's ``required=`` would refuse the old spelling ``old``); ``what``: what it is for."""
    names = ", ".join(backbone_names())
    lead = f"{what}: " if what else ""
    shown = "required" if default is None else f"default {default}"
    parser.add_argument("--backbone", default=default, help=f"{lead}one of: {names} ({shown})")
    if old:
        add_alias(parser, old, "--backbone")


def add_stride(parser: argparse.ArgumentParser, default: int = DEFAULT_STRIDE, help: str | None = None) -> None:
    parser.add_argument("--stride", type=int, default=default, choices=STRIDES,
                        help=help or f"output stride of a CNN's feature map (default {default}; a ViT's is its patch size)")


def add_features(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", default=None, choices=VIT_FEATURES,
                        help="ViTs: the last block's keys (k, the default, as LOST and TokenCut), queries, values or output tokens")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")


def add_weights_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights-dir", type=Path, default=None, help=WEIGHTS_DIR_HELP)


def add_model(parser: argparse.ArgumentParser, default: str | None = "imagenet", stride: int = DEFAULT_STRIDE,
              *, old_backbone: str | None = None, features: bool = True) -> None:
    """The options of every model-running command: backbone, stride, ViT features (``features``),
    device, weights folder."""
    group = parser.add_argument_group("model")
    add_backbone(group, default, old=old_backbone)
    add_stride(group, stride)
    if features:
        add_features(group)
    add_device(group)
    add_weights_dir(group)


def add_precision(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> None:
    parser.add_argument("--precision", default="fp32", choices=choices,
                        help="fp32 (default), or autocast of the forward passes to a 16-bit type (GPUs)")
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA fp32 math use TensorFloat-32 (default: IEEE fp32, boxes equal to the CPU's)")


def add_download_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS", help=TIMEOUT_HELP)


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_workers(parser: argparse.ArgumentParser, default: int | None) -> None:
    text = "chosen from the cores" if default is None else str(default)
    parser.add_argument("--workers", type=non_negative_int, default=default, help=f"image decoding worker processes (default {text})")


def add_seed(parser: argparse.ArgumentParser, default: int = 0, what: str = "") -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"random seed{' of ' + what if what else ''} (default {default})")


def add_k(parser: argparse.ArgumentParser, default: int = 100) -> None:
    parser.add_argument("--k", type=positive_int, default=default, help=f"LOST expansion candidates (default {default})")


def cosine(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a cosine similarity in [-1, 1], got {text}")
    return value


def add_tau(parser: argparse.ArgumentParser, default: float | None = None) -> None:
    """TokenCut's ``--tau``; ``default=None``: the method's own (:data:`~discovery.defaults.DEFAULT_TAU`)."""
    parser.add_argument("--tau", type=cosine, default=default,
                        help=f"TokenCut: cosine similarity above which two cells are joined in its graph (default {DEFAULT_TAU})")


def add_max_side(parser: argparse.ArgumentParser, default: int | None) -> None:
    shown = "0" if default is None else str(default)
    parser.add_argument("--max-side", type=non_negative_int, default=default,
                        help=f"shrink images whose longer side exceeds this first, 0: native size (default {shown})")


def add_training_control(parser: argparse.ArgumentParser, unit: str, checkpoint_every: int) -> None:
    """What every trainer shares: the output file, checkpoints, resuming, stopping early."""
    group = parser.add_argument_group("run control")
    group.add_argument("--out", type=Path, required=True, help="the file to write (.safetensors); its resumable state is OUT.state.pt")
    group.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                       help=f"write OUT.state.pt every N {unit} (default {checkpoint_every})")
    group.add_argument("--stop-after", type=positive_int, default=None, metavar=unit.upper(),
                       help=f"stop after this many {unit} in total; continue later with --resume")
    group.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    group.add_argument("--overwrite", action="store_true", help="replace an existing OUT (and discard its state file)")
    add_progress(group)


def add_optimiser(parser: argparse.ArgumentParser, *, lr: float, batch_size: int, grad_clip: float | None,
                  warmup_steps: int, lr_help: str = "learning rate") -> None:
    """Learning rate, batch, gradient clipping and warm-up, spelled the same for every trainer."""
    group = parser.add_argument_group("optimiser")
    group.add_argument("--lr", type=positive_float, default=lr, help=f"{lr_help} (default {lr:g})")
    group.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"global images per step (default {batch_size})")
    shown = "off" if not grad_clip else f"{grad_clip:g}"
    group.add_argument("--grad-clip", type=non_negative_float, default=grad_clip or 0.0, metavar="NORM",
                       help=f"clip the global gradient norm to this before each step, 0: off (default {shown})")
    group.add_argument("--warmup-steps", type=non_negative_int, default=warmup_steps,
                       help=f"raise the learning rate linearly over this many first steps, 0: off (default {warmup_steps})")


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A ``cls`` dataclass from the parsed arguments whose names are its fields, plus ``overrides``;
    arguments that are not fields are ignored, fields with no argument keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def add_image_source(parser: argparse.ArgumentParser, what: str = "the images") -> None:
    """``--images DIR`` or ``--dataset NAME --root DIR`` (its boxes give CorLoc), plus ``--limit N``."""
    from .splits import DATASETS

    group = parser.add_argument_group("images")
    group.add_argument("--images", type=Path, default=None, metavar="DIR", help=f"{what}: every image under DIR (no boxes)")
    group.add_argument("--dataset", choices=tuple(DATASETS), default=None,
                       help=f"{what}: a benchmark split with boxes (with --root; `discovery photos` writes a small real one)")
    group.add_argument("--root", type=Path, default=None, help="the dataset folder (see docs/eval.md for the layouts)")
    group.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
