"""``discovery pul train ...`` (refine a backbone on random labels) and ``discovery pul plot CSV``.

Also runs under ``torchrun --nproc-per-node N -m discovery pul train ...`` (DDP). See docs/pul.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    t.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    t.add_argument("--weights-dir", type=Path, default=None, help="folder of weights files (default: $DISCOVERY_WEIGHTS_DIR, a checkout's weights/, else the torch hub cache)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train)

    plot = actions.add_parser("plot", help="draw a --log-dynamics CSV (losses, swing phenomenon, function speed)")
    plot.add_argument("csv", type=Path, metavar="CSV")
    plot.add_argument("--out", type=Path, required=True, help="the PNG to write")
    plot.set_defaults(run=run_plot)


def run_train(args: argparse.Namespace) -> int:
    from ..pul import PULError, train

    if args.root is not None and args.dataset is None:
        raise PULError("--root goes with --dataset; use --images DIR for a folder")
    config = PULConfig(
        base=args.base, out=args.out, images=args.images, dataset=args.dataset, root=args.root,
        epochs=args.epochs, classes=args.classes, temperature=args.temperature, kl_weight=args.kl_weight,
        batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
        precision=args.precision, tf32=args.tf32, seed=args.seed, workers=args.workers,
        input_size=args.input_size, checkpoint_every=args.checkpoint_every, stop_after=args.stop_after,
        resume=args.resume, overwrite=args.overwrite, log_dynamics=args.log_dynamics, device=args.device,
        weights_dir=args.weights_dir, progress=not args.no_progress,
    )
    result = train(config)
    if result.finished:
        from ..distributed import from_env

        if from_env().is_main:
            skipped = f", {len(result.skipped)} unreadable skipped" if result.skipped else ""
            print(f"wrote {result.out} ({result.images} images{skipped}, {result.steps} steps); "
                  f"use it with --backbone pul:{result.out}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ..pul import plot_dynamics

    print(f"wrote {plot_dynamics(args.csv, args.out)}")
    return 0
