"""``discovery pul train ...`` (refine a backbone on random labels), ``discovery pul plot CSV`` and
``discovery pul evidence`` (Grad-CAM across checkpoints, activation statistics per stage).

``--eval-every`` takes its CorLoc hook from the harness (``discovery.eval.monitor``), imported only then.

Also runs under ``torchrun --nproc-per-node N -m discovery pul train ...`` (DDP). See docs/pul.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import options
from ..pul import DATASETS, PULConfig
from ..pul.config import TRAIN_PRECISIONS


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery pul`."""
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = PULConfig(base="", out=Path())

    t = actions.add_parser("train", help="fine-tune a backbone on random labels; write a pul:FILE checkpoint")
    model = t.add_argument_group("model")
    options.add_backbone(model, None, old="--base", what="the base to refine")
    options.add_device(model)
    options.add_weights_dir(model)
    data = t.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    data.add_argument("--dataset", choices=DATASETS, help="use the image list of an evaluation split (only image paths are used)")
    t.add_argument("--root", type=Path, help="dataset root (with --dataset)")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    t.add_argument("--classes", type=int, default=d.classes, help=f"number of random classes (default {d.classes})")
    t.add_argument("--temperature", type=float, default=d.temperature, help=f"KL temperature T (default {d.temperature:g})")
    t.add_argument("--kl-weight", type=float, default=d.kl_weight, help=f"weight of T^2*KL (default {d.kl_weight:g})")
    t.add_argument("--input-size", type=int, default=d.input_size, help=f"training crop side in pixels (default {d.input_size})")
    options.add_seed(t, d.seed, "labels, order, augmentation, init")
    options.add_optimiser(t, lr=d.lr, batch_size=d.batch_size, grad_clip=d.grad_clip, warmup_steps=d.warmup_steps,
                          lr_help=f"projector learning rate; the trunk uses {d.trunk_lr_scale:g}x")
    options.add_precision(t, choices=tuple(TRAIN_PRECISIONS))
    options.add_workers(t, d.workers)
    options.add_training_control(t, "steps", d.checkpoint_every)
    watch = t.add_argument_group("watching the run")
    watch.add_argument("--log-dynamics", type=Path, default=None, metavar="CSV", help="per-step losses, class histogram, function speed")
    watch.add_argument("--eval-every", type=options.positive_int, default=None, metavar="STEPS",
                       help="score LOST CorLoc every STEPS steps (and after the last) into the CSV's corloc column (needs --log-dynamics)")
    watch.add_argument("--eval-dataset", choices=DATASETS, default=None, help="benchmark to score on (default: --dataset, the training images)")
    watch.add_argument("--eval-root", type=Path, default=None, help="its root (default: --root)")
    watch.add_argument("--eval-limit", type=options.positive_int, default=None, metavar="N",
                       help="score the first N images of that split only (default: all)")
    watch.add_argument("--save-every-epoch", action="store_true",
                       help="also keep OUT.epochK.safetensors for K = 0..epochs, with the projector (for `pul evidence`)")
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
    options.add_max_side(e, 512)
    options.add_stride(e, 32, help="output stride (default 32, as PUL trains)")
    options.add_device(e)
    options.add_weights_dir(e)
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
    from discovery.eval.monitor import corloc_hook as harness_hook

    from ..splits import DatasetError

    try:
        return harness_hook(dataset, root, args.eval_limit)
    except DatasetError as err:
        raise PULError(f"--eval-dataset: {err}") from None


def run_train(args: argparse.Namespace) -> int:
    from ..distributed import from_env
    from ..pul import PULError, train

    if args.root is not None and args.dataset is None:
        raise PULError("--root goes with --dataset; use --images DIR for a folder")
    evaluate = corloc_hook(args)
    config = options.from_args(PULConfig, args, base=args.backbone, progress=not args.no_progress)
    result = train(config, evaluate=evaluate)
    if result.finished and from_env().is_main:
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
        args.checkpoints, images, args.out, count=args.count, max_side=args.max_side or None, stride=args.stride,
        device=args.device, weights_dir=args.weights_dir, plot=not args.no_plot,
    )
    for path in written.values():
        print(f"wrote {path}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ..pul import plot_dynamics

    print(f"wrote {plot_dynamics(args.csv, args.out)}")
    return 0
