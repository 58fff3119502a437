"""``discovery cad train --run RUN_DIR --base NAME --out FILE``: a class-agnostic detector from an
``eval run`` folder's boxes (LOST+CAD). Also under ``torchrun --nproc-per-node N -m discovery cad train``.
See docs/cad.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cad import CADConfig
from ..detector import NORMS, DetectorConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cad", help="train a class-agnostic detector on discovered boxes (LOST+CAD)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d, a = CADConfig(run=Path(), base="", out=Path()), DetectorConfig()
    t = actions.add_parser("train", help="train a Faster R-CNN (C4 on a ResNet50) on the boxes of an `eval run` folder")
    t.add_argument("--run", dest="run_dir", type=Path, required=True, help="an `eval run` folder (config.json + predictions.jsonl)")
    t.add_argument("--base", required=True,
                   help="trunk init: imagenet | imagenet-v2 | dino | random | pul:PATH | PATH (ResNet50: C4 layout) | "
                        "timm:NAME[@FILE] | module:pkg.mod:factory (any CNN: its output map and an MLP RoI head)")
    t.add_argument("--base-stride", type=int, default=d.base_stride,
                   help=f"output stride of a timm:/module: base (default {d.base_stride}; a ResNet50 is always 32)")
    t.add_argument("--out", type=Path, required=True, help="the detector to write (.safetensors)")
    t.add_argument("--root", type=Path, default=None, help="the dataset folder, if it moved since the run")
    t.add_argument("--iterations", type=int, default=d.iterations, help=f"default {d.iterations}")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global images per iteration (default {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"default {d.lr:g}")
    t.add_argument("--warmup", type=int, default=d.warmup, help=f"linear warm-up iterations (default {d.warmup})")
    t.add_argument("--lr-steps", type=_ints, default=d.lr_steps, metavar="I,J", help="iterations where lr drops x0.1 (default none)")
    t.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradients' global norm (default: no clipping)")
    t.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    t.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    t.add_argument("--min-size", type=_ints, default=a.min_size, metavar="S,S,...",
                   help="training short sides, one drawn per batch (default 480..800 step 32)")
    t.add_argument("--min-size-test", type=int, default=a.min_size_test, help=f"inference short side (default {a.min_size_test})")
    t.add_argument("--max-size", type=int, default=a.max_size, help=f"long side cap (default {a.max_size})")
    t.add_argument("--anchor-sizes", type=_ints, default=a.anchor_sizes, metavar="S,S,...", help="RPN anchor sides in pixels (default 32..512)")
    t.add_argument("--roi-size", type=int, default=a.roi_size, help=f"RoIAlign output side (default {a.roi_size})")
    t.add_argument("--rpn-batch", type=int, default=a.rpn_batch, help=f"anchors sampled per image (default {a.rpn_batch})")
    t.add_argument("--roi-batch", type=int, default=a.roi_batch, help=f"RoIs sampled per image (default {a.roi_batch})")
    t.add_argument("--proposals", type=_ints, default=(a.pre_nms_train, a.proposals_train, a.pre_nms_test, a.proposals_test),
                   metavar="PRE_TRAIN,TRAIN,PRE_TEST,TEST", help="RPN proposals before/after NMS (default 12000,2000,6000,1000)")
    t.add_argument("--norm", choices=NORMS, default=a.norm, help="BatchNorm: frozen (default) or sync (batch statistics, SyncBN under torchrun)")
    t.add_argument("--freeze-at", type=int, default=a.freeze_at,
                   help="untrained stages: 0 none .. 2 stem+layer1 (default) .. 5 whole trunk; a timm:/module: trunk trains only at 0")
    t.add_argument("--head-width", type=int, default=a.head_width, help=f"MLP RoI head width of a timm:/module: base (default {a.head_width})")
    t.add_argument("--workers", type=int, default=d.workers, help=f"image decoding workers (default {d.workers})")
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"write OUT.state.pt every N iterations (default {d.checkpoint_every})")
    t.add_argument("--stop-after", type=int, default=None, metavar="ITERS", help="stop after this many iterations, resumable with --resume")
    t.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing OUT (and discard its state file)")
    t.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    t.add_argument("--weights-dir", type=Path, default=None, help="folder of weights files (default: the project's weights/)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..cad import CADError, train
    from ..distributed import from_env

    if len(args.proposals) != 4:
        raise CADError("--proposals takes four numbers: PRE_TRAIN,TRAIN,PRE_TEST,TEST")
    detector = DetectorConfig(
        min_size=args.min_size, min_size_test=args.min_size_test, max_size=args.max_size, anchor_sizes=args.anchor_sizes,
        roi_size=args.roi_size, rpn_batch=args.rpn_batch, roi_batch=args.roi_batch,
        pre_nms_train=args.proposals[0], proposals_train=args.proposals[1],
        pre_nms_test=args.proposals[2], proposals_test=args.proposals[3], norm=args.norm, freeze_at=args.freeze_at,
        head_width=args.head_width,
    )
    config = CADConfig(
        run=args.run_dir, base=args.base, out=args.out, root=args.root, base_stride=args.base_stride, detector=detector, iterations=args.iterations,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, lr_steps=args.lr_steps, clip_grad=args.clip_grad, seed=args.seed,
        flip=not args.no_flip, workers=args.workers, checkpoint_every=args.checkpoint_every, stop_after=args.stop_after,
        resume=args.resume, overwrite=args.overwrite, device=args.device, weights_dir=args.weights_dir,
        progress=not args.no_progress,
    )
    result = train(config)
    if result.finished and from_env().is_main:
        print(f"wrote {result.out} ({result.steps} iterations); use it with "
              f"`discovery locate --detector {result.out}` or `python -m eval run --method cad:{result.out}`")
    return 0
