"""`eval run`: predict one box per image, stream it to ``RUN_DIR/predictions.jsonl``, score CorLoc.

Run folder::

    RUN_DIR/config.json              what decides the boxes (dataset, root, method, weights, stride, k...)
    RUN_DIR/predictions.jsonl        one line per finished image (the single-process stream, and the merge)
    RUN_DIR/predictions.rankR.jsonl  rank R's stream under torchrun (merged into the above at the end)
    RUN_DIR/results.json             the summary, written when the run completes

Resume: a second run into the same folder skips every image that has a line; a folder made with a
different config is refused. Lines are appended per batch with flush + fsync, so SIGKILL loses at
most the two batches in flight (eval/overlap.py); a torn last line is dropped (and the file repaired) by the next run.

Distributed (torchrun): rank 0 opens the dataset, checks the config, merges what earlier runs left
and broadcasts the images still to do; each rank takes every world-size-th of them; at the end
the records are gathered on rank 0 (so a shared file system is needed only for resuming a killed
multi-node run), which writes predictions.jsonl in dataset order and results.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

import discovery
from discovery.distributed import DistContext, from_env, join, teardown
from discovery.files import write_text_atomic
from discovery.images import PreparedImage
from discovery.localizer import Embedding, Localizer
from discovery.precision import precision_record
from discovery.provenance import git_revision

from . import predictions as P
from .datasets import Dataset, Item, open_dataset
from .detection import detection_score
from .loader import bucketed, decoded_stream
from .methods import Method, Proposal, get_method
from .metrics import best_iou, corloc
from .overlap import overlapped
from .scoring import dataset_summary

PREDICTIONS = "predictions.jsonl"
CONFIG = "config.json"
RESULTS = "results.json"


class RunError(Exception):
    """A run that cannot go on; the text is for the user. ``quiet``: another rank reports it."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class RunOptions:
    """Everything ``eval run`` takes. ``limit``: evaluate only the first N images of the split;
    ``batch_size``: images per forward pass (same padded size only); ``workers``: decoding
    processes (``None`` for either: :func:`default_batch_size` / :func:`default_workers`); ``skip_bad``: leave out images with bad annotations or unreadable files;
    ``precision``: ``fp32`` (the protocol) or ``bf16``/``fp16`` autocast for the trunk on GPUs;
    ``tf32``: let CUDA fp32 math use TensorFloat-32 (off: IEEE fp32, see :mod:`discovery.precision`)."""

    dataset: str
    root: Path
    backbone: str
    out: Path
    stride: int = 16
    k: int = 100
    no_hard: bool = False
    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    method: str = "lost"
    device: str = "cpu"
    precision: str = "fp32"
    tf32: bool = False
    weights_dir: Path | None = None
    image_list: Path | None = None
    skip_bad: bool = False
    progress: bool = True


def _embedder(localizer: Localizer, method: Method):
    """Decoded images → embeddings: the forward pass, or for a detector the pixels alone."""
    if needs_features(method):
        return lambda good: localizer.embed_arrays([d.rgb for d in good])
    return lambda good: [Embedding(PreparedImage(torch.empty(0), d.rgb.shape[:2], d.rgb.shape[:2], d.rgb), torch.empty(0)) for d in good]


def needs_features(method: Method) -> bool:
    """Whether ``method`` reads trunk features (a detector reads only the images)."""
    return getattr(method, "needs_features", True)


def localizer_backbone(opts: RunOptions, method: Method) -> str:
    """The backbone the runner loads: ``--backbone``, or for a method that needs no features the
    seeded ``random`` one, used only for decoding and padding (never run, needs no file)."""
    return opts.backbone if needs_features(method) else "random"


def run_config(opts: RunOptions, dataset: Dataset, localizer: Localizer, method: Method | None = None) -> dict:
    """The settings that decide the boxes; a run folder holds one config."""
    info = localizer.backbone.info
    detector = getattr(method, "detector", None)
    extra = {"detector_sha256": detector.sha256, "detector_base": detector.metadata["base"]["name"]} if detector else {}
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "root": str(dataset.root),
        "no_hard": dataset.no_hard,
        "image_list_sha256": dataset.image_list_sha256,
        "method": opts.method,
        "backbone": info.name,
        "weights_sha256": info.sha256,
        "stride": localizer.stride,
        "k": opts.k,
        **precision_record(localizer.backbone.device, localizer.precision, localizer.tf32),
        **extra,
    }


def check_config(out: Path, config: dict) -> None:
    """Write ``config.json`` in a new run folder, or refuse one made with other settings."""
    path = out / CONFIG
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise RunError(f"{path} is not valid JSON; delete the run folder or choose another --out") from None
        diffs = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in config.items() if stored.get(k) != v]
        if diffs:
            raise RunError(
                f"{out} holds a run with a different config ({'; '.join(diffs)}); choose another --out or delete that folder"
            )
        return
    existing = [p.name for p in out.iterdir()] if out.is_dir() else []
    if any(name.startswith("predictions") for name in existing):
        raise RunError(f"{out} holds predictions but no {CONFIG}; choose another --out or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, P.dumps(config) + "\n")


def collect_leftovers(out: Path) -> dict[str, dict]:
    """Repair ``predictions.jsonl``, fold in rank files a killed distributed run left, and return
    every finished record by image id (rank 0 only)."""
    for stale in out.glob(f".{PREDICTIONS}.tmp*"):
        stale.unlink(missing_ok=True)
    main = out / PREDICTIONS
    records = P.load_records(main, repair=True).records
    rank_files = sorted(out.glob("predictions.rank*.jsonl"))
    if rank_files:
        extra = []
        for part in rank_files:
            for image_id, record in P.load_records(part).records.items():
                if image_id not in records:
                    records[image_id] = record
                    extra.append(record)
        with open(main, "a") as fh:
            P.append_records(fh, extra)
        for part in rank_files:
            part.unlink(missing_ok=True)
    return records


def make_record(item: Item, proposal: Proposal) -> dict:
    """The JSONL line for one image; ``correct`` and ``iou`` are computed from the rounded box
    that is written, so re-scoring the file gives the same CorLoc. A detector's line also holds
    all its ``boxes`` and ``scores`` (best first; ``box`` is the first)."""
    box = None if proposal.box is None else [round(float(v), 2) for v in proposal.box]
    best = best_iou(box, item.boxes)
    record = {
        "image_id": item.image_id,
        "box": box,
        "seed": None if proposal.seed is None else [round(float(v), 2) for v in proposal.seed],
        "correct": best >= 0.5,
        "iou": round(best, 4),
    }
    if proposal.boxes is not None:
        record["boxes"] = [[round(float(v), 2) for v in b] for b in proposal.boxes]
        record["scores"] = [round(float(v), 4) for v in proposal.scores]
    return record


def default_batch_size(device: str) -> int:
    """1 on CPUs, where bigger batches measured slower (``python -m bench``: activations leave the
    caches), 32 on GPUs (docs/performance.md: batch 32 fed the H200 better than 16)."""
    return 32 if str(device).startswith("cuda") else 1


def default_workers(device: str = "cpu") -> int:
    """Decoding processes: none on a machine of two cores or fewer (a worker would take a core
    from the convolutions; measured faster). On CPUs half the cores, at most 4 (the rest run the
    network); on GPUs every core but two (the main process feeds the device), at most 16. Under
    torchrun the node's cores are split between its processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: processes share the node
    if cores <= 2:
        return 0
    if str(device).startswith("cuda"):
        return min(16, cores - 2)
    return min(4, cores // 2)


def run(opts: RunOptions) -> dict | None:
    """Run (or resume) an evaluation; return the results summary on rank 0, ``None`` elsewhere.

    Raises :class:`RunError`, :class:`~eval.datasets.DatasetError` or the library's one-line errors
    (``WeightsError``, ``ValueError``) for user mistakes.
    """
    if opts.limit is not None and opts.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {opts.limit}")
    opts = replace(
        opts,
        batch_size=default_batch_size(opts.device) if opts.batch_size is None else opts.batch_size,
        workers=default_workers(opts.device) if opts.workers is None else opts.workers,
    )
    if opts.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if opts.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {opts.workers}")
    get_method(opts.method)  # a bad name fails before any process group is joined
    ctx = from_env(opts.device)
    started = join(ctx)  # a caller that joined the group already (``reproduce``) keeps it
    try:
        return _run(opts, ctx)
    finally:
        if started:
            teardown(ctx)


def _start(opts: RunOptions, ctx: DistContext, method: Method) -> tuple[dict, Localizer | None]:
    """Rank 0's start: dataset, backbone, config, leftovers. Returns the payload for every rank."""
    dataset = open_dataset(opts.dataset, opts.root, opts.no_hard, opts.image_list, opts.skip_bad)
    if not needs_features(method):
        method.load(ctx.device)
    localizer = Localizer(
        localizer_backbone(opts, method), device=ctx.device, stride=opts.stride, max_side=None, weights_dir=opts.weights_dir,
        precision=opts.precision, tf32=opts.tf32,
    )
    config = run_config(opts, dataset, localizer, method)
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    check_config(out, config)
    done = collect_leftovers(out)
    scope = dataset.items[: opts.limit] if opts.limit else dataset.items
    todo = [item for item in scope if item.image_id not in done]
    payload = {"config": config, "todo": todo}
    return {"payload": payload, "dataset": dataset, "scope": scope, "done": done}, localizer


def _run(opts: RunOptions, ctx: DistContext) -> dict | None:
    started = time.perf_counter()
    state, localizer, error = None, None, None
    method = get_method(opts.method)
    if ctx.is_main:
        try:
            state, localizer = _start(opts, ctx, method)
        except Exception as err:  # every rank must hear about it, or they wait forever
            if not ctx.active:
                raise
            error = err
    if ctx.is_main:
        shared = ctx.broadcast({"error": str(error)} if error is not None else state["payload"])
    else:
        shared = ctx.broadcast(None)
    if error is not None:
        raise error
    if "error" in shared:
        raise RunError(shared["error"], quiet=True)
    config, todo = shared["config"], shared["todo"]
    if localizer is None:  # other ranks load the weights rank 0 verified (no concurrent downloads)
        localizer = Localizer(
            localizer_backbone(opts, method), device=ctx.device, stride=opts.stride, max_side=None,
            weights_dir=opts.weights_dir, download=False, precision=opts.precision, tf32=opts.tf32,
        )
        if localizer.backbone.info.sha256 != config["weights_sha256"]:
            raise RunError(f"rank {ctx.rank} loaded other weights than rank 0 ({localizer.backbone.info.sha256[:12]})")
    if ctx.is_main and localizer.backbone.info.is_random and needs_features(method):
        print("note: backbone 'random' is a pipeline check, not a model", file=sys.stderr)

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)  # other nodes may not share rank 0's file system
    shard = ctx.shard(todo)
    stream_path = out / (PREDICTIONS if not ctx.active else f"predictions.rank{ctx.rank}.jsonl")
    prior = [state["done"][it.image_id] for it in state["scope"] if it.image_id in state["done"]] if ctx.is_main else []
    seen, hits = len(prior), sum(bool(r.get("correct")) for r in prior)
    mine: list[dict] = []
    skipped: list[tuple[str, str]] = []
    loop_start = time.perf_counter()
    bar = tqdm(
        total=len(shard), disable=not (ctx.is_main and opts.progress), unit="img", dynamic_ncols=True,
        desc=f"{opts.dataset} {opts.method}" + (f" rank0/{ctx.world_size}" if ctx.active else ""),
    )
    with open(stream_path, "a" if not ctx.active else "w") as fh, bar:
        stream = decoded_stream(shard, localizer.stride, opts.workers)
        embed = _embedder(localizer, method)

        def propose(embeddings: list[Embedding]) -> list[Proposal]:
            return method(localizer, embeddings, opts.k)

        for batch, proposals in overlapped(bucketed(stream, opts.batch_size), embed, propose, localizer.backbone.device):
            good = [d for d in batch if d.rgb is not None]
            for bad in (d for d in batch if d.rgb is None):
                if not opts.skip_bad:
                    raise RunError(f"{bad.error} (use --skip-bad to leave such images out)")
                skipped.append((bad.item.image_id, bad.error))
            if good:
                records = [make_record(d.item, p) for d, p in zip(good, proposals)]
                P.append_records(fh, records)
                mine.extend(records)
                seen += len(records)
                hits += sum(r["correct"] for r in records)
            bar.update(len(batch))
            bar.set_postfix(corloc=f"{100.0 * hits / max(seen, 1):.1f}")
    loop_time = time.perf_counter() - loop_start

    gathered = ctx.gather({"records": mine, "skipped": skipped, "loop_time": loop_time})
    if ctx.active:
        if ctx.is_main:
            with open(out / PREDICTIONS, "a") as fh:
                P.append_records(fh, [r for part in gathered for r in part["records"]])
            for part in out.glob("predictions.rank*.jsonl"):
                part.unlink(missing_ok=True)
        ctx.barrier()
        stream_path.unlink(missing_ok=True)
    if not ctx.is_main:
        return None
    return _finish(opts, ctx, state, localizer, config, gathered, started)


def _finish(
    opts: RunOptions, ctx: DistContext, state: dict, localizer: Localizer, config: dict, gathered: list[dict], started: float
) -> dict:
    """Rank 0's end: predictions.jsonl in dataset order, CorLoc over the images in scope, results.json."""
    out = Path(opts.out)
    dataset: Dataset = state["dataset"]
    records = P.load_records(out / PREDICTIONS).records
    order = {item.image_id: i for i, item in enumerate(dataset.items)}
    ordered = sorted(records.values(), key=lambda r: order.get(r["image_id"], len(order)))
    P.write_records(out / PREDICTIONS, ordered)
    skipped = [s for part in gathered for s in part["skipped"]]
    skipped_ids = {image_id for image_id, _ in skipped}
    evaluated = [item for item in state["scope"] if item.image_id not in skipped_ids]
    result = corloc(evaluated, {k: r.get("box") for k, r in records.items()})
    processed = sum(len(part["records"]) for part in gathered)
    loop_time = max(part["loop_time"] for part in gathered)
    wall = time.perf_counter() - started
    info = localizer.backbone.info
    summary = {
        "corloc": round(result.value, 4),
        "correct": result.correct,
        "total": result.total,
        "missing": result.missing,
        "method": opts.method,
        "backbone": info.name,
        "weights_sha256": info.sha256,
        "random_backbone": info.is_random,
        "stride": config["stride"],
        "k": config["k"],
        "precision": config["precision"],
        "fp32_math": config["fp32_math"],
        **{key: config[key] for key in ("detector_sha256", "detector_base") if key in config},
        **dataset_summary(dataset),
        "limit": opts.limit,
        "skipped_images": len(skipped),
        "library_version": discovery.__version__,
        "torch_version": torch.__version__,
        "git_revision": git_revision(),
        "device": ctx.device,
        "world_size": ctx.world_size,
        "batch_size": opts.batch_size,
        "workers": opts.workers,
        "images_this_run": processed,
        "images_resumed": len(state["scope"]) - len(state["payload"]["todo"]),
        "wall_time_s": round(wall, 3),
        "loop_time_s": round(loop_time, 3),
        "images_per_s": round(processed / loop_time, 3) if loop_time > 0 and processed else 0.0,
        "predictions": str(out / PREDICTIONS),
    }
    detections = {k: (r["boxes"], r["scores"]) for k, r in records.items() if "boxes" in r}
    if detections:
        summary.update(detection_score(evaluated, detections).to_json())
    if skipped:
        summary["skipped_examples"] = [reason for _, reason in skipped[:5]]
    write_text_atomic(out / RESULTS, P.dumps(summary) + "\n")
    return summary

