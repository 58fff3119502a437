"""CorLoc evaluation on VOC07 / VOC12 trainval and COCO20k: run, score, synthetic data, fetching the data, reproduce.

A thin argparse layer over :mod:`eval.runner`, :mod:`eval.scoring`, :mod:`eval.synth`,
:mod:`eval.fetch` and :mod:`eval.reproduce`; options shared with other commands come from
:mod:`discovery.options`. User mistakes end in ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from discovery import options

from .datasets import DATASETS, DatasetError, open_dataset
from .errors import run_parsed
from .fetch import MIRROR_ENV, fetch_coco20k_list, fetch_dataset
from .methods import METHODS
from .predictions import dumps
from .reproduce import add_arguments as add_reproduce_arguments
from .reproduce import run_args as run_reproduce
from .run_options import BATCH_SIZE_DEFAULT, RunOptions
from .rundir import RunFolder
from .runner import run
from .scoring import score_file
from .synth import make_synthetic

PROG = "python -m eval"


def _dataset_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from_run = "" if required else " (default: the run folder's)"
    p.add_argument("--dataset", required=required, choices=tuple(DATASETS),
                   help=f"benchmark (trainval for VOC, the 20k list for COCO){from_run}")
    p.add_argument("--root", required=required, type=Path,
                   help=f"dataset folder (see docs/eval.md for the accepted layouts){from_run}")
    p.add_argument("--no-hard", action="store_true", help="VOC: drop truncated/difficult objects, skip images left with none")
    p.add_argument("--image-list", type=Path, default=None, help="COCO20k: LOST's coco_20k_filenames.txt (default: ROOT/coco_20k_filenames.txt)")
    p.add_argument("--skip-bad", action="store_true", help="leave out images whose annotation or file is missing/malformed (counted)")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = options.Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.set_defaults(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="predict a box per image and compute CorLoc (resumable; torchrun-aware)")
    _dataset_args(p)
    options.add_model(p)
    p.add_argument("--out", required=True, type=Path, help="run folder: config.json, predictions.jsonl, results.json")
    options.add_k(p)
    options.add_tau(p)
    p.add_argument("--limit", type=options.positive_int, default=None, metavar="N", help="evaluate only the first N images of the split")
    p.add_argument("--batch-size", type=options.positive_int, default=None,
                   help=f"images per forward pass, same padded size only (default: {BATCH_SIZE_DEFAULT})")
    options.add_workers(p, None)
    p.add_argument("--method", default="lost", metavar="METHOD",
                   help=f"box method: {', '.join(METHODS)}, or cad:FILE, a `discovery cad train` detector (default lost)")
    options.add_precision(p)
    options.add_progress(p)
    p.set_defaults(run=_run)

    p = sub.add_parser("score", help="CorLoc of a predictions file (our JSONL or COCO results JSON) or of a run folder")
    p.add_argument("run_dir", nargs="?", type=Path, default=None, metavar="RUN_DIR",
                   help="an `eval run` folder: its predictions, scored on the dataset its config.json names")
    _dataset_args(p, required=False)
    p.add_argument("--predictions", type=Path, default=None, help="predictions.jsonl, a COCO results JSON list, or a run folder")
    p.add_argument("--allow-unknown-ids", action="store_true",
                   help="score a file most of whose image ids are not in the dataset (e.g. all of train2014 on COCO20k)")
    p.set_defaults(run=_score)

    p = sub.add_parser("synth", help="write a small synthetic dataset in the VOC and COCO layouts")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=options.positive_int, default=24, help="images per dataset (default 24)")
    options.add_seed(p, 0, "the synthetic images")
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
    options.add_download_timeout(p)
    options.add_progress(p)
    p.set_defaults(run=_fetch_datasets)

    p = sub.add_parser("reproduce", help="the seed paper's Table 5 (LOST on imagenet / dino) and the ViT rows (LOST and TokenCut on DINO ViTs), before and after PUL (resumable)")
    add_reproduce_arguments(p)
    p.set_defaults(run=run_reproduce)

    p = sub.add_parser("fetch-coco20k", help="download LOST's COCO20k image list alone and check its sha256")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--root", type=Path, default=None, help="save as ROOT/coco_20k_filenames.txt (where `run` looks)")
    group.add_argument("--out", type=Path, default=None, help="save to this file (default ./coco_20k_filenames.txt)")
    p.set_defaults(run=_fetch)
    return parser


def _run(args: argparse.Namespace) -> int:
    summary = run(options.from_args(RunOptions, args, progress=not args.no_progress))
    if summary is not None:
        _notes(summary)
        print(dumps(summary))
        print(summary_line(summary), file=sys.stderr)
    return 0


def summary_line(summary: dict) -> str:
    """``voc07: CorLoc 33.3 % (8 / 24), 7.5 s, results in runs/x/results.json`` (and what was resumed)."""
    resumed = f", {summary['images_resumed']} resumed" if summary.get("images_resumed") else ""
    return (f"{summary['dataset']}: CorLoc {summary['corloc']:.1f} % ({summary['correct']} / {summary['total']}), "
            f"{summary['wall_time_s']:.1f} s{resumed}, results in {summary['results']}")


def _score(args: argparse.Namespace) -> int:
    if args.run_dir is not None and args.predictions is not None:
        raise ValueError("give the run folder or --predictions, not both")
    predictions = args.run_dir if args.run_dir is not None else args.predictions
    if predictions is None:
        raise ValueError("name a run folder (eval score RUN_DIR) or a file (--predictions FILE)")
    folder = RunFolder(predictions) if predictions.is_dir() else None
    config = folder.read_config() if folder is not None else {}
    name, root = args.dataset or config.get("dataset"), args.root or config.get("root")
    if name is None or root is None:
        raise ValueError("--dataset and --root are needed to score a file (a run folder names its own)")
    dataset = open_dataset(name, root, args.no_hard or bool(config.get("no_hard")), args.image_list, args.skip_bad)
    if name == config.get("dataset") and config.get("image_list_sha256") not in (None, dataset.image_list_sha256):
        raise DatasetError(f"{folder.path} was run on another image list than {dataset.image_list}; pass --image-list")
    summary = score_file(dataset, folder.predictions if folder is not None else predictions, args.allow_unknown_ids)
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
    left_out = summary.get("skipped_bad_annotation_or_file", 0) + summary.get("skipped_unreadable_image", 0)
    if left_out:
        print(f"note: {left_out} images left out as bad (--skip-bad)", file=sys.stderr)


def _synth(args: argparse.Namespace) -> int:
    made = make_synthetic(args.out, args.n, args.seed, args.overwrite)
    print(f"wrote {made.images} images each for VOC2007, VOC2012 and COCO under {made.out}")
    print(f"  {args.prog} run --dataset voc07 --root {made.out} --backbone random --out runs/synth-voc07")
    print(f"  {args.prog} run --dataset coco20k --root {made.coco_root} --backbone random --out runs/synth-coco20k")
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
    first = args.datasets[0]
    print(f"  {args.prog} run --dataset {first} --root {args.root} --backbone imagenet --out runs/{first}-imagenet")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    dest = args.root if args.root is not None else (args.out or Path(os.getcwd()) / "coco_20k_filenames.txt")
    if args.root is not None and not args.root.is_dir():
        raise DatasetError(f"--root {args.root} is not a directory")
    path = fetch_coco20k_list(dest)
    print(f"{path} (sha256 verified)")
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``python -m eval`` in a checkout; ``discovery eval`` when installed (``prog`` names which)."""
    return run_parsed(build_parser(prog), argv)
