"""`reproduce`: the seed paper's Table 5 grid in one command, resumable cell by cell.

For each base (``imagenet``, ``dino``; DINO's ViTs ``dino-vits16``, ``dino-vits8``, ``dino-vitb16``
on request) and dataset (VOC07, VOC12, COCO20k): CorLoc of the base for each method (``eval run``;
LOST for CNNs, LOST and TokenCut for ViTs unless ``--methods`` says), PUL for N epochs on the
dataset's own images (no label read), the same CorLoc of the refined weights; then
``OUT/table.md`` and ``OUT/table.csv`` (rewritten after every cell).

Folder::

    OUT/reproduce.json                     the options that decide the numbers (a re-run must match)
    OUT/cells/<base>-<dataset>/lost-base/  an ``eval run`` folder (resumable); tokencut-base/ likewise
    OUT/cells/<base>-<dataset>/pul.safetensors (+ .state.pt while training; resumed with --resume)
    OUT/cells/<base>-<dataset>/pul-dynamics.csv
    OUT/cells/<base>-<dataset>/lost-pul/   ``eval run`` of ``pul:pul.safetensors`` (tokencut-pul/ likewise)
    OUT/cells/<base>-<dataset>/cell.json   the cell's numbers and config (weights hashes, git revision, options)
    OUT/synth/                             ``--quick`` only: the synthetic data

Killing it and running the same command again continues where it stopped: finished run folders
and checkpoints are reused, a PUL state file is resumed. Under ``torchrun`` every step runs on all
ranks (eval run shards images, PUL trains with DDP); rank 0 writes the tables. See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

import discovery
from discovery import options
from discovery.defaults import DISCOVERY_METHODS
from discovery.distributed import DistContext, from_env, join, teardown
from discovery.files import write_text_atomic
from discovery.provenance import git_revision
from discovery.pul import PULConfig, state_path, train
from discovery.splits import DATASETS
from discovery.weights import REGISTRY, load_file

from .errors import RunError, run_parsed
from .run_options import BATCH_SIZE_DEFAULT, RunOptions
from .rundir import config_diffs
from .runner import run
from .synth import make_synthetic
from .table import PIPELINE_CHECK, Row, table_csv, table_markdown

BASES = ("imagenet", "dino")
#: DINO's ViTs with published LOST and TokenCut rows (DESIGN §11; ``--bases`` takes them).
VIT_BASES = ("dino-vits16", "dino-vits8", "dino-vitb16")
#: ``--quick``'s bases: the random ResNet50 and a random ViT-S/16, so CI runs both paths.
QUICK_BASES = ("random", "random-vits16")
OPTIONS_FILE = "reproduce.json"
#: ``--quick``: PUL settings small enough for a 2-core CPU (random weights diverge at lr 0.01).
QUICK_PUL = {"input_size": 32, "batch_size": 4, "lr": 1e-4, "workers": 0}


@dataclass(frozen=True)
class ReproduceOptions:
    """``root``: the data (``eval fetch`` layout; ignored with ``quick``); ``out``: the folder above;
    ``stop_after``: stop each PUL run after that many steps in total (resumable; for time-boxed jobs
    and tests); ``limit``: score only the first N images of each split (a smoke test, not the protocol)."""

    out: Path
    root: Path | None = None
    bases: tuple[str, ...] = BASES
    datasets: tuple[str, ...] = tuple(DATASETS)
    epochs: int = 3
    quick: bool = False
    synth_images: int = 6
    device: str = "cpu"
    batch_size: int = 32
    lr: float = 0.01
    input_size: int = 224
    workers: int | None = None
    eval_batch_size: int | None = None
    limit: int | None = None
    seed: int = 0
    stop_after: int | None = None
    weights_dir: Path | None = None
    progress: bool = True
    methods: tuple[str, ...] | None = None

    def methods_of(self, base: str) -> tuple[str, ...]:
        """``methods``, or by default LOST for a CNN base and LOST and TokenCut for a ViT."""
        if self.methods is not None:
            return self.methods
        vit = base.startswith("random-") or (base in REGISTRY and REGISTRY[base].is_vit)
        return ("lost", "tokencut") if vit else ("lost",)

    def decisive(self) -> dict:
        """The options a re-run into the same folder must repeat (the others may change)."""
        return {"quick": self.quick, "epochs": self.epochs, "synth_images": self.synth_images if self.quick else None,
                "batch_size": self.batch_size, "lr": self.lr, "input_size": self.input_size, "limit": self.limit,
                "seed": self.seed, "root": None if self.quick else str(Path(self.root).resolve())}


class Stopped(Exception):
    """A PUL run stopped early on purpose (``--stop-after``); the same command continues it."""


def prepare(opts: ReproduceOptions) -> ReproduceOptions:
    """Validate, and for ``quick`` switch to the synthetic data, the random base and tiny PUL settings."""
    unknown = [d for d in opts.datasets if d not in DATASETS]
    if unknown or not opts.datasets:
        raise ValueError(f"--datasets: choose from {', '.join(DATASETS)} (got {', '.join(unknown) or 'none'})")
    if opts.epochs < 1:
        raise ValueError(f"--epochs must be at least 1 (got {opts.epochs})")
    if opts.methods is not None and (not opts.methods or any(m not in DISCOVERY_METHODS for m in opts.methods)):
        raise ValueError(f"--methods: choose from {', '.join(DISCOVERY_METHODS)}")
    if opts.quick:
        return replace(opts, root=opts.out / "synth", bases=QUICK_BASES, **QUICK_PUL)
    if opts.root is None:
        raise ValueError("--root DATA is needed (the eval fetch layout), or --quick for the synthetic pipeline check")
    if not Path(opts.root).is_dir():
        raise ValueError(f"--root {opts.root} is not a directory")
    return opts


def check_options(opts: ReproduceOptions) -> None:
    """Write ``reproduce.json`` in a new folder, or refuse a folder made with other decisive options."""
    path = opts.out / OPTIONS_FILE
    wanted = opts.decisive()
    if path.is_file():
        stored = json.loads(path.read_text())
        diffs = config_diffs(stored, wanted)
        if diffs:
            raise RunError(f"{opts.out} holds a reproduction with other options ({'; '.join(diffs)}); choose another --out")
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(wanted, indent=1, sort_keys=True) + "\n")


def make_quick_data(opts: ReproduceOptions) -> None:
    """``eval synth`` into ``OUT/synth`` (made in a side folder and renamed, so a kill leaves none half-made)."""
    if opts.root.is_dir():
        return
    partial = opts.out / "synth.partial"
    shutil.rmtree(partial, ignore_errors=True)
    make_synthetic(partial, opts.synth_images, seed=0)
    partial.rename(opts.root)


def corloc(opts: ReproduceOptions, dataset: str, backbone: str, method: str, folder: Path) -> dict | None:
    """``eval run`` of ``method`` into ``folder`` (resumes what is there); the summary on rank 0."""
    return run(RunOptions(
        dataset=dataset, root=opts.root, backbone=backbone, out=folder, limit=opts.limit, method=method,
        batch_size=opts.eval_batch_size, workers=opts.workers, device=opts.device,
        weights_dir=opts.weights_dir, progress=opts.progress,
    ))


def refine(opts: ReproduceOptions, ctx: DistContext, base: str, dataset: str, cell: Path) -> tuple[Path, dict]:
    """PUL on the dataset's images (no annotation): reuse a finished checkpoint, resume a state file,
    or start. Returns the checkpoint and its metadata. Raises :class:`Stopped` after ``stop_after``."""
    out = cell / "pul.safetensors"
    done = ctx.broadcast(out.is_file())
    if not done:
        resume = ctx.broadcast(state_path(out).is_file())
        config = PULConfig(
            base=base, out=out, dataset=dataset, root=opts.root, epochs=opts.epochs, batch_size=opts.batch_size,
            lr=opts.lr, input_size=opts.input_size, seed=opts.seed, stop_after=opts.stop_after, resume=resume,
            log_dynamics=cell / "pul-dynamics.csv", device=opts.device, weights_dir=opts.weights_dir,
            progress=opts.progress, **({} if opts.workers is None else {"workers": opts.workers}),
        )
        result = train(config)
        if not result.finished:
            raise Stopped(f"PUL {base} on {dataset} stopped at step {result.steps} of {result.total_steps}")
    meta = load_file(out)[1]
    if meta.get("epochs") != opts.epochs or meta.get("base", {}).get("name") != base:
        raise RunError(f"{out} was trained with other settings ({meta.get('epochs')} epochs from {meta.get('base', {}).get('name')}); "
                       "delete it or choose another --out")
    return out, meta


def run_cell(opts: ReproduceOptions, ctx: DistContext, base: str, dataset: str, note: str) -> list[Row]:
    """One base × dataset: each method on the base, PUL, each method on the refined weights;
    ``cell.json``. One row per method."""
    cell = opts.out / "cells" / f"{base}-{dataset}"
    methods = opts.methods_of(base)
    before = {m: corloc(opts, dataset, base, m, cell / f"{m}-base") for m in methods}
    checkpoint, meta = refine(opts, ctx, base, dataset, cell)
    after = {m: corloc(opts, dataset, f"pul:{checkpoint}", m, cell / f"{m}-pul") for m in methods}
    if not ctx.is_main:
        return [Row(base, dataset, method=m) for m in methods]
    revision = git_revision()
    rows = [Row(
        base, dataset, before[m]["corloc"], after[m]["corloc"], opts.epochs, meta["images"]["count"],
        before[m]["weights_sha256"], after[m]["weights_sha256"], revision, note, m,
    ) for m in methods]
    record = {
        "base": base, "dataset": dataset, "note": note,
        **{f"{m}_base": before[m] for m in methods}, **{f"{m}_pul": after[m] for m in methods},
        "pul": {"checkpoint": str(checkpoint), "metadata": meta},
        **{f"published_{r.method}": r.published for r in rows},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "git_revision": revision, "library_version": discovery.__version__, "torch_version": torch.__version__,
    }
    write_text_atomic(cell / "cell.json", json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return rows


def write_tables(opts: ReproduceOptions, rows: list[Row], note: str) -> None:
    notes = []
    if opts.quick:
        notes.append(f"\n**{PIPELINE_CHECK.capitalize()}**: random-init weights on {opts.synth_images} synthetic images per "
                     "dataset (`eval synth`), tiny PUL settings. It checks that every step runs and resumes; its numbers mean nothing.")
    if opts.limit:
        notes.append(f"\nCorLoc on the first {opts.limit} images of each split only: not the published protocol.")
    write_text_atomic(opts.out / "table.md", table_markdown(rows, note, tuple(notes)))
    write_text_atomic(opts.out / "table.csv", table_csv(rows))


def reproduce(opts: ReproduceOptions) -> list[Row]:
    """Run (or continue) the grid; return the rows (complete on rank 0).

    Raises :class:`Stopped` when ``stop_after`` ends a PUL run early, and the harness's and
    library's one-line errors for bad input.
    """
    opts = prepare(opts)
    ctx = from_env(opts.device)
    started = join(ctx)
    try:
        if ctx.is_main:
            check_options(opts)
            if opts.quick:
                make_quick_data(opts)
        ctx.barrier()
        note = PIPELINE_CHECK if opts.quick else ""
        grid = [(b, d) for b in opts.bases for d in opts.datasets]
        cells = [[Row(b, d, note=note, method=m) for m in opts.methods_of(b)] for b, d in grid]
        for i, (base, dataset) in enumerate(grid):
            cells[i] = run_cell(opts, ctx, base, dataset, note)
            if ctx.is_main:
                write_tables(opts, [row for rows in cells for row in rows], note)
        return [row for rows in cells for row in rows]
    finally:
        if started:
            teardown(ctx)


def _default(name: str, cls: type = ReproduceOptions):
    return next(f.default for f in fields(cls) if f.name == name)


_PUL_WORKERS = _default("workers", PULConfig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=None, help="the data, as `eval fetch --root DATA` lays it out")
    p.add_argument("--out", type=Path, required=True, help="folder for the run folders, checkpoints and table.md / table.csv")
    p.add_argument("--bases", nargs="+", default=list(BASES), choices=(*BASES, *VIT_BASES),
                   help=f"default: {' '.join(BASES)} (DINO's ViTs: {' '.join(VIT_BASES)})")
    p.add_argument("--methods", nargs="+", default=None, choices=DISCOVERY_METHODS,
                   help="discovery methods scored (default: lost for CNN bases, lost and tokencut for ViTs)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=tuple(DATASETS), help=f"default: {' '.join(DATASETS)}")
    p.add_argument("--epochs", type=options.positive_int, default=_default("epochs"),
                   help=f"PUL epochs (default {_default('epochs')}, the paper's)")
    p.add_argument("--quick", action="store_true",
                   help="pipeline check: the same grid on `eval synth` data with the random base and tiny PUL settings (CPU, minutes)")
    p.add_argument("--synth-images", type=options.positive_int, default=_default("synth_images"),
                   help=f"--quick: synthetic images per dataset (default {_default('synth_images')})")
    options.add_device(p)
    p.add_argument("--batch-size", type=options.positive_int, default=_default("batch_size"),
                   help=f"PUL global images per step (default {_default('batch_size')})")
    p.add_argument("--lr", type=options.positive_float, default=_default("lr"),
                   help=f"PUL projector learning rate (default {_default('lr'):g})")
    p.add_argument("--eval-batch-size", type=options.positive_int, default=None,
                   help=f"eval run images per forward pass (default: {BATCH_SIZE_DEFAULT})")
    # not options.add_workers: None means two different defaults here
    p.add_argument("--workers", type=options.non_negative_int, default=None,
                   help=f"image decoding worker processes (default: eval run's chosen from the cores, PUL's {_PUL_WORKERS})")
    p.add_argument("--limit", type=options.positive_int, default=None, metavar="N",
                   help="score only the first N images per split (smoke test, not the protocol)")
    options.add_seed(p, _default("seed"), "PUL")
    p.add_argument("--stop-after", type=options.positive_int, default=None, metavar="STEPS",
                   help="stop each PUL run after STEPS steps in total (the same command continues it)")
    options.add_weights_dir(p)
    options.add_progress(p)


def run_args(args: argparse.Namespace) -> int:
    if args.quick and sorted(args.bases) != sorted(BASES):
        raise ValueError(f"--quick always uses the random bases ({', '.join(QUICK_BASES)}); leave out --bases")
    methods = tuple(dict.fromkeys(args.methods)) if args.methods else None
    opts = options.from_args(
        ReproduceOptions, args, bases=tuple(dict.fromkeys(args.bases)), datasets=tuple(dict.fromkeys(args.datasets)),
        progress=not args.no_progress, methods=methods,
    )
    try:
        reproduce(opts)
    except Stopped as stop:
        print(f"{stop}; run the same command again to continue", file=sys.stderr)
        return 3
    if from_env().is_main:
        print((opts.out / "table.md").read_text())
        print(f"wrote {opts.out / 'table.md'} and {opts.out / 'table.csv'}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m eval reproduce") -> int:
    """``discovery reproduce ...`` (``python -m eval reproduce ...`` in a checkout)."""
    parser = options.Parser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(run=run_args)
    return run_parsed(parser, argv)
