"""``discovery cad train --run RUN_DIR --backbone NAME --out FILE``: a class-agnostic detector from an
``eval run`` folder's boxes (LOST+CAD). Also under ``torchrun --nproc-per-node N -m discovery cad train``.
See docs/cad.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import options
from ..cad import CADConfig
from ..detector import NORMS, DetectorConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery cad`."""
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d, a = CADConfig(run=Path(), base="", out=Path()), DetectorConfig()
    t = actions.add_parser("train", help="train a Faster R-CNN (C4 on a ResNet50) on the boxes of an `eval run` folder")
    t.add_argument("--run", dest="run_dir", type=Path, required=True, help="an `eval run` folder (config.json + predictions.jsonl)")
    t.add_argument("--root", type=Path, default=None, help="the dataset folder, if it moved since the run")
    model = t.add_argument_group("model")
    options.add_backbone(model, None, old="--base",
                         what="the detector's trunk (a ResNet50: the C4 layout; any other CNN: its output map and an MLP RoI head)")
    model.add_argument("--base-stride", type=options.positive_int, default=d.base_stride,
                       help=f"output stride of a timm:/module: backbone (default {d.base_stride}; a ResNet50 is always 32)")
    options.add_device(model)
    options.add_weights_dir(model)
    t.add_argument("--iterations", type=int, default=d.iterations, help=f"default {d.iterations}")
    options.add_optimiser(t, lr=d.lr, batch_size=d.batch_size, grad_clip=d.grad_clip, warmup_steps=d.warmup_steps)
    options.add_alias(t, "--clip-grad", "--grad-clip", type=options.non_negative_float)
    options.add_alias(t, "--warmup", "--warmup-steps", type=options.non_negative_int)
    t.add_argument("--lr-steps", type=_ints, default=d.lr_steps, metavar="I,J", help="iterations where lr drops x0.1 (default none)")
    options.add_seed(t, d.seed)
    t.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    options.add_workers(t, d.workers)
    options.add_training_control(t, "iterations", d.checkpoint_every)
    net = t.add_argument_group("detector")
    net.add_argument("--min-size", type=_ints, default=a.min_size, metavar="S,S,...",
                     help="training short sides, one drawn per batch (default 480..800 step 32)")
    net.add_argument("--min-size-test", type=int, default=a.min_size_test, help=f"inference short side (default {a.min_size_test})")
    net.add_argument("--max-size", type=int, default=a.max_size, help=f"long side cap (default {a.max_size})")
    net.add_argument("--anchor-sizes", type=_ints, default=a.anchor_sizes, metavar="S,S,...", help="RPN anchor sides in pixels (default 32..512)")
    net.add_argument("--roi-size", type=int, default=a.roi_size, help=f"RoIAlign output side (default {a.roi_size})")
    net.add_argument("--rpn-batch", type=int, default=a.rpn_batch, help=f"anchors sampled per image (default {a.rpn_batch})")
    net.add_argument("--roi-batch", type=int, default=a.roi_batch, help=f"RoIs sampled per image (default {a.roi_batch})")
    net.add_argument("--proposals", type=_ints, default=(a.pre_nms_train, a.proposals_train, a.pre_nms_test, a.proposals_test),
                     metavar="PRE_TRAIN,TRAIN,PRE_TEST,TEST", help="RPN proposals before/after NMS (default 12000,2000,6000,1000)")
    net.add_argument("--norm", choices=NORMS, default=a.norm, help="BatchNorm: frozen (default) or sync (batch statistics, SyncBN under torchrun)")
    net.add_argument("--freeze-at", type=int, default=a.freeze_at,
                     help="untrained stages: 0 none .. 2 stem+layer1 (default) .. 5 whole trunk; a timm:/module: trunk trains only at 0")
    net.add_argument("--head-width", type=int, default=a.head_width, help=f"MLP RoI head width of a timm:/module: backbone (default {a.head_width})")
    t.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..cad import CADError, pseudo_boxes, train
    from ..distributed import from_env
    from ..eval.errors import RunError
    from ..eval.rundir import RunFolder

    if len(args.proposals) != 4:
        raise CADError("--proposals takes four numbers: PRE_TRAIN,TRAIN,PRE_TEST,TEST")
    pre_train, proposals_train, pre_test, proposals_test = args.proposals
    detector = options.from_args(DetectorConfig, args, pre_nms_train=pre_train, proposals_train=proposals_train,
                                 pre_nms_test=pre_test, proposals_test=proposals_test)
    config = options.from_args(CADConfig, args, run=args.run_dir, base=args.backbone, detector=detector,
                               flip=not args.no_flip, progress=not args.no_progress)
    try:
        run = RunFolder(args.run_dir).read()
    except RunError as err:
        raise CADError(str(err)) from None
    result = train(config, pseudo_boxes(run, args.root))
    if result.finished and from_env().is_main:
        print(f"wrote {result.out} ({result.steps} iterations); use it with "
              f"`discovery locate --detector {result.out}` or `discovery eval run --method cad:{result.out}`")
    return 0
