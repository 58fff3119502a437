"""CorLoc evaluation on VOC07 / VOC12 trainval and COCO20k: run, score, synthetic data, fetching the data, reproduce.

A thin argparse layer over :mod:`eval.runner`, :mod:`eval.scoring`, :mod:`eval.synth`,
:mod:`eval.fetch` and :mod:`eval.reproduce`. User mistakes end in ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from discovery.cli import USER_ERRORS, add_backbone_args

from .datasets import DATASETS, DatasetError, open_dataset
from .fetch import MIRROR_ENV, fetch_coco20k_list, fetch_dataset
from .methods import METHODS
from .predictions import PredictionsError, dumps
from .reproduce import add_arguments as add_reproduce_arguments
from .reproduce import run_args as run_reproduce
from .runner import RunError, RunOptions, run
from .scoring import score_file
from .synth import make_synthetic

ERRORS = (DatasetError, RunError, PredictionsError, *USER_ERRORS)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=tuple(DATASETS), help="benchmark (trainval for VOC, the 20k list for COCO)")
    p.add_argument("--root", required=True, type=Path, help="dataset folder (see docs/eval.md for the accepted layouts)")
    p.add_argument("--no-hard", action="store_true", help="VOC: drop truncated/difficult objects, skip images left with none")
    p.add_argument("--image-list", type=Path, default=None, help="COCO20k: LOST's coco_20k_filenames.txt (default: ROOT/coco_20k_filenames.txt)")
    p.add_argument("--skip-bad", action="store_true", help="leave out images whose annotation or file is missing/malformed (counted)")


def build_parser(prog: str = "python -m eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="predict a box per image and compute CorLoc (resumable; torchrun-aware)")
    _dataset_args(p)
    add_backbone_args(p)
    p.add_argument("--out", required=True, type=Path, help="run folder: config.json, predictions.jsonl, results.json")
    p.add_argument("--k", type=int, default=100, help="LOST expansion candidates (default 100)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass, same padded size only (default: 1 on CPU, 32 on GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes, 0 decodes inline (default: 0 on <= 2 cores; else CPU: half the cores, at most 4; GPU: all cores but 2, at most 16)")
    p.add_argument("--method", default="lost", metavar="METHOD",
                   help=f"box method: {', '.join(METHODS)}, or cad:FILE, a `discovery cad train` detector (default lost)")
    p.add_argument("--tf32", action="store_true",
                   help="let CUDA fp32 convolutions/matmuls use TensorFloat-32 (faster; default: IEEE fp32, recorded in config.json)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="trunk precision: fp32 (default, the protocol) or bf16/fp16 autocast (GPU speed; boxes may change)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run)

    p = sub.add_parser("score", help="CorLoc of a predictions file (our JSONL or COCO results JSON)")
    _dataset_args(p)
    p.add_argument("--predictions", required=True, type=Path, help="predictions.jsonl, or a COCO results JSON list")
    p.set_defaults(run=_score)

    p = sub.add_parser("synth", help="write a small synthetic dataset in the VOC and COCO layouts")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=24, help="images per dataset (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds VOCdevkit/ or coco/")
    p.set_defaults(run=_synth)

    p = sub.add_parser("fetch", help="download, verify and unpack VOC07 / VOC12 / COCO20k into ROOT (resumable)")
    p.add_argument("datasets", nargs="+", choices=tuple(DATASETS), metavar="DATASET", help=f"any of: {', '.join(DATASETS)}")
    p.add_argument("--root", required=True, type=Path, help="data folder: VOC goes to ROOT/VOCdevkit/VOC<year>, COCO to ROOT/coco")
    p.add_argument("--mirror", default=os.environ.get(MIRROR_ENV) or None, metavar="URL",
                   help=f"fetch every file from URL/<file name> instead of the official sites (default ${MIRROR_ENV})")
    p.add_argument("--archives", type=Path, default=None, metavar="DIR",
                   help="where archives are downloaded and resumed (default ROOT/archives); verified files already there are used")
    p.add_argument("--keep-archives", action="store_true", help="keep the archives after unpacking (default: delete them)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a connect or read may block (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_fetch_datasets)

    p = sub.add_parser("reproduce", help="the seed paper's Table 5: LOST CorLoc of imagenet / dino before and after PUL (resumable)")
    add_reproduce_arguments(p)
    p.set_defaults(run=run_reproduce)

    p = sub.add_parser("fetch-coco20k", help="download LOST's COCO20k image list alone and check its sha256")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--root", type=Path, default=None, help="save as ROOT/coco_20k_filenames.txt (where `run` looks)")
    group.add_argument("--out", type=Path, default=None, help="save to this file (default ./coco_20k_filenames.txt)")
    p.set_defaults(run=_fetch)
    return parser


def _run(args: argparse.Namespace) -> int:
    opts = RunOptions(
        dataset=args.dataset, root=args.root, backbone=args.backbone, out=args.out, stride=args.stride, k=args.k,
        no_hard=args.no_hard, limit=args.limit, batch_size=args.batch_size, workers=args.workers, method=args.method,
        device=args.device, weights_dir=args.weights_dir, image_list=args.image_list, skip_bad=args.skip_bad,
        precision=args.precision, tf32=args.tf32, progress=not args.no_progress,
    )
    summary = run(opts)
    if summary is not None:
        _notes(summary)
        print(dumps(summary))
    return 0


def _score(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset, args.root, args.no_hard, args.image_list, args.skip_bad)
    summary = score_file(dataset, args.predictions)
    _notes(summary)
    print(dumps(summary))
    return 0


def _notes(summary: dict) -> None:
    if summary.get("official_image_list") is False:
        print("note: the image list is not LOST's coco_20k_filenames.txt; CorLoc is not comparable to published COCO20k numbers",
              file=sys.stderr)
    expected = summary.get("expected_images")
    full = not summary.get("limit") and not summary.get("no_hard")
    if full and expected and summary.get("total") != expected:
        print(f"note: {summary.get('total')} images evaluated; the published {summary.get('dataset')} protocol has {expected}",
              file=sys.stderr)
    if summary.get("skipped_bad") or summary.get("skipped_images"):
        print(f"note: {summary.get('skipped_bad', 0) + summary.get('skipped_images', 0)} images left out as bad (--skip-bad)",
              file=sys.stderr)


def _synth(args: argparse.Namespace) -> int:
    made = make_synthetic(args.out, args.n, args.seed, args.overwrite)
    print(f"wrote {made.images} images each for VOC2007, VOC2012 and COCO under {made.out}")
    print(f"  python -m eval run --dataset voc07 --root {made.out} --backbone random --out runs/synth-voc07")
    print(f"  python -m eval run --dataset coco20k --root {made.coco_root} --backbone random --out runs/synth-coco20k")
    return 0


def _fetch_datasets(args: argparse.Namespace) -> int:
    for name in dict.fromkeys(args.datasets):
        done = fetch_dataset(
            name, args.root, mirror=args.mirror, archives_dir=args.archives, keep_archives=args.keep_archives,
            progress=not args.no_progress, timeout=args.timeout,
        )
        if done.downloaded:
            print(f"{name}: {done.folder} (verified and unpacked: {', '.join(done.downloaded)})")
        else:
            print(f"{name}: already present at {done.folder}")
    print(f"  python -m eval run --dataset {args.datasets[0]} --root {args.root} --backbone imagenet --out runs/{args.datasets[0]}-imagenet")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    dest = args.root if args.root is not None else (args.out or Path(os.getcwd()) / "coco_20k_filenames.txt")
    if args.root is not None and not args.root.is_dir():
        raise DatasetError(f"--root {args.root} is not a directory")
    path = fetch_coco20k_list(dest)
    print(f"{path} (sha256 verified)")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m eval") -> int:
    """``python -m eval`` in a checkout; ``discovery eval`` when installed (``prog`` names which)."""
    return run_parsed(build_parser(prog), argv)


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``args.run``; user mistakes become one ``error:`` line and status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except RunError as err:
        if not err.quiet:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
