"""``discovery pul train ...`` (refine a backbone on random labels), ``discovery pul plot CSV`` and
``discovery pul evidence`` (Grad-CAM across checkpoints, activation statistics per stage).

``--eval-every`` takes its CorLoc hook from the harness (``eval.monitor``), imported only then.

Also runs under ``torchrun --nproc-per-node N -m discovery pul train ...`` (DDP). See docs/pul.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backbones import STRIDES
from ..pul import DATASETS, PULConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pul", help="refine a backbone on random labels (PUL), plot its training dynamics")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = PULConfig(base="", out=Path())

    t = actions.add_parser("train", help="fine-tune a backbone on random labels; write a pul:FILE checkpoint")
    t.add_argument("--base", required=True, help="imagenet | imagenet-v2 | dino | random | timm:NAME[@FILE] | module:pkg.mod:factory | pul:PATH | PATH.safetensors/.pt/.pth")
    data = t.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    data.add_argument("--dataset", choices=DATASETS, help="use the image list of an evaluation split (only image paths are used)")
    t.add_argument("--root", type=Path, help="dataset root (with --dataset)")
    t.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.safetensors)")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    t.add_argument("--classes", type=int, default=d.classes, help=f"number of random classes (default {d.classes})")
    t.add_argument("--temperature", type=float, default=d.temperature, help=f"KL temperature T (default {d.temperature:g})")
    t.add_argument("--kl-weight", type=float, default=d.kl_weight, help=f"weight of T^2*KL (default {d.kl_weight:g})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size (default {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"projector learning rate; trunk uses {d.trunk_lr_scale:g}x (default {d.lr:g})")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"clip the global gradient norm to this before each step, 0: off (default {d.grad_clip:g})")
    t.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"raise the learning rate linearly over this many first steps, 0: off (default {d.warmup_steps})")
    t.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"),
                   help="fp32 (default) or bf16 autocast for the forward passes (GPUs)")
    t.add_argument("--tf32", action="store_true", help="let CUDA fp32 math use TensorFloat-32 (default: IEEE fp32)")
    t.add_argument("--seed", type=int, default=d.seed, help=f"labels, order, augmentation, init (default {d.seed})")
    t.add_argument("--workers", type=int, default=d.workers, help=f"image decoding workers (default {d.workers})")
    t.add_argument("--input-size", type=int, default=d.input_size, help=f"training crop side in pixels (default {d.input_size})")
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"write OUT.state.pt every N steps (default {d.checkpoint_every})")
    t.add_argument("--stop-after", type=int, default=None, metavar="STEPS", help="stop after this many steps in total, resumable with --resume")
    t.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing OUT (and discard its state file)")
    t.add_argument("--log-dynamics", type=Path, default=None, metavar="CSV", help="per-step losses, class histogram, function speed")
    t.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help="score LOST CorLoc every STEPS steps (and after the last) into the CSV's corloc column (needs --log-dynamics)")
    t.add_argument("--eval-dataset", choices=DATASETS, default=None, help="benchmark to score on (default: --dataset, the training images)")
    t.add_argument("--eval-root", type=Path, default=None, help="its root (default: --root)")
    t.add_argument("--eval-limit", type=int, default=None, metavar="N", help="score the first N images of that split only (default: all)")
    t.add_argument("--save-every-epoch", action="store_true",
                   help="also keep OUT.epochK.safetensors for K = 0..epochs, with the projector (for `pul evidence`)")
    t.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    t.add_argument("--weights-dir", type=Path, default=None, help="folder of weights files (default: $DISCOVERY_WEIGHTS_DIR, a checkout's weights/, else the torch hub cache)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train)

    e = actions.add_parser("evidence", help="Grad-CAM grid across checkpoints and activation statistics per stage (the paper's Fig. 4 and 6)")
    e.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME",
                   help="the base first (e.g. imagenet), then OUT.epoch0..N.safetensors from pul train --save-every-epoch")
    data = e.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", type=Path, help="the image folder the run trained on")
    data.add_argument("--dataset", choices=DATASETS, help="the split the run trained on")
    e.add_argument("--root", type=Path, help="dataset root (with --dataset)")
    e.add_argument("--out", type=Path, required=True, help="folder for activations.md/.csv/.png and gradcam_grid.png")
    e.add_argument("--count", type=int, default=4, help="training images to show and measure (default 4)")
    e.add_argument("--max-side", type=int, default=512, help="shrink images whose longer side exceeds this (default 512)")
    e.add_argument("--stride", type=int, default=32, choices=STRIDES, help="output stride (default 32, as PUL trains)")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    e.add_argument("--weights-dir", type=Path, default=None, help="folder of weights files")
    e.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib needed)")
    e.set_defaults(run=run_evidence)

    plot = actions.add_parser("plot", help="draw a --log-dynamics CSV (losses, swing phenomenon, function speed, CorLoc)")
    plot.add_argument("csv", type=Path, metavar="CSV")
    plot.add_argument("--out", type=Path, required=True, help="the PNG to write")
    plot.set_defaults(run=run_plot)


def corloc_hook(args: argparse.Namespace):
    """The CorLoc hook for ``--eval-every`` (from the harness, imported only when asked), or ``None``."""
    from ..pul import PULError

    if args.eval_every is None:
        if args.eval_dataset or args.eval_root or args.eval_limit:
            raise PULError("--eval-dataset / --eval-root / --eval-limit go with --eval-every")
        return None
    if args.log_dynamics is None:
        raise PULError("--eval-every writes into the dynamics CSV: give --log-dynamics CSV too")
    dataset = args.eval_dataset or args.dataset
    root = args.eval_root or (args.root if args.eval_dataset in (None, args.dataset) else None)
    if dataset is None or root is None:
        raise PULError("--eval-every needs a benchmark with boxes: --eval-dataset NAME --eval-root DIR (default: --dataset/--root)")
    from ..splits import DatasetError
    from .harness import harness_module

    try:
        return harness_module("eval.monitor").corloc_hook(dataset, root, args.eval_limit)
    except DatasetError as err:
        raise PULError(f"--eval-dataset: {err}") from None


def run_train(args: argparse.Namespace) -> int:
    from ..pul import PULError, train

    if args.root is not None and args.dataset is None:
        raise PULError("--root goes with --dataset; use --images DIR for a folder")
    evaluate = corloc_hook(args)
    config = PULConfig(
        base=args.base, out=args.out, images=args.images, dataset=args.dataset, root=args.root,
        epochs=args.epochs, classes=args.classes, temperature=args.temperature, kl_weight=args.kl_weight,
        batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
        precision=args.precision, tf32=args.tf32, seed=args.seed, workers=args.workers,
        input_size=args.input_size, checkpoint_every=args.checkpoint_every, stop_after=args.stop_after,
        resume=args.resume, overwrite=args.overwrite, log_dynamics=args.log_dynamics, device=args.device,
        weights_dir=args.weights_dir, progress=not args.no_progress, eval_every=args.eval_every,
        save_every_epoch=args.save_every_epoch,
    )
    result = train(config, evaluate=evaluate)
    if result.finished:
        from ..distributed import from_env

        if from_env().is_main:
            skipped = f", {len(result.skipped)} unreadable skipped" if result.skipped else ""
            print(f"wrote {result.out} ({result.images} images{skipped}, {result.steps} steps); "
                  f"use it with --backbone pul:{result.out}")
    return 0


def run_evidence(args: argparse.Namespace) -> int:
    from ..pul import PULError
    from ..pul.data import list_dataset, list_folder
    from ..pul.evidence import write_evidence

    if (args.dataset is None) != (args.root is None):
        raise PULError("--dataset and --root go together; use --images DIR for a folder")
    images = list_folder(args.images) if args.images is not None else list_dataset(args.dataset, args.root)
    written = write_evidence(
        args.checkpoints, images, args.out, count=args.count, max_side=args.max_side, stride=args.stride,
        device=args.device, weights_dir=args.weights_dir, plot=not args.no_plot,
    )
    for path in written.values():
        print(f"wrote {path}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ..pul import plot_dynamics

    print(f"wrote {plot_dynamics(args.csv, args.out)}")
    return 0
