"""`eval run`: predict one box per image, stream it into the run folder (:mod:`eval.rundir`), score CorLoc.

Resume: a second run into the same folder skips every image that has a line; a folder made with a
different config is refused. Lines are appended per batch with flush + fsync, so SIGKILL loses at
most the two batches in flight (eval/overlap.py); a torn last line is dropped (and the file repaired) by the next run.

Distributed (torchrun): rank 0 opens the dataset, checks the config, merges what earlier runs left
and broadcasts the images still to do; each rank takes every world-size-th of them; at the end
the records are gathered on rank 0 (so a shared file system is needed only for resuming a killed
multi-node run), which writes predictions.jsonl in dataset order and results.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

import discovery
from discovery.defaults import DEFAULT_TAU
from discovery.distributed import DistContext, from_env, join, teardown
from discovery.localizer import Localizer
from discovery.precision import fp32_math, precision_record
from discovery.progress import Progress
from discovery.provenance import git_revision

from .datasets import Dataset, Item, open_dataset
from .detection import detection_score
from .errors import RunError
from .loader import Decoded, bucketed, decoded_stream
from .methods import METHOD_OPTIONS, DetectorMethod, Method, PixelMethod, Proposal, get_method
from .metrics import best_iou, corloc
from .overlap import overlapped
from .predictions import append_records
from .run_options import RunOptions, default_batch_size, default_workers
from .rundir import RunFolder
from .scoring import dataset_summary


@dataclass(frozen=True)
class Model:
    """What computes the boxes in one process: ``method`` and, for a feature method, the
    ``localizer`` whose trunk feeds it (``None`` for a :class:`PixelMethod`, which gets the pixels)."""

    method: Method
    localizer: Localizer | None
    device: torch.device
    stride: int
    tf32: bool

    @property
    def is_random(self) -> bool:
        """A pipeline check, not a model: the ``random`` backbone, a checkpoint trained from it
        (:attr:`~discovery.backbone.BackboneInfo.is_random`), or a detector trained from one."""
        if self.localizer is not None:
            return self.localizer.backbone.info.is_random
        return isinstance(self.method, DetectorMethod) and self.method.detector.is_random

    @property
    def random_note(self) -> str:
        """The stderr line of a pipeline check."""
        if self.localizer is None:
            return f"note: {self.method.detector.pipeline_check}"
        return f"note: {self.localizer.backbone.info.pipeline_check}"

    def config(self) -> dict:
        """The model's part of config.json: backbone and weights, or the pixel method's own record;
        ``random_backbone: true`` for a pipeline check (what ``cad train`` reads of its pseudo-boxes)."""
        check = {"random_backbone": True} if self.is_random else {}
        if self.localizer is None:
            return {"stride": self.stride, **precision_record(self.device, "fp32", self.tf32), **self.method.config(), **check}
        info, loc = self.localizer.backbone.info, self.localizer
        # ViTs only, so that the runs of CNNs made before ViTs existed still resume
        vit = {} if loc.backbone.standardize else {"features": loc.backbone.trunk.features, "lost_standardize": False}
        return {"backbone": info.name, "weights_sha256": info.sha256, "stride": loc.stride, **vit,
                **precision_record(self.device, loc.precision, loc.tf32), **check}

    def embed(self, good: list[Decoded]):
        """The expensive step of a batch: the trunk's forward pass, or for a pixel method the images alone."""
        if self.localizer is None:
            return [d.rgb for d in good]
        return self.localizer.embed_arrays([d.rgb for d in good])

    def propose(self, embedded, k: int, options: dict) -> list[Proposal]:
        if self.localizer is None:
            with fp32_math(self.tf32):
                return self.method.propose(embedded)
        return self.method(self.localizer, embedded, k, **options)


def load_model(opts: RunOptions, ctx: DistContext, method: Method, download: bool) -> Model:
    """The one place a process loads what runs ``method``: the pixel method itself, or a localizer."""
    if isinstance(method, PixelMethod):
        method.load(ctx.device)
        return Model(method, None, torch.device(ctx.device), opts.stride, opts.tf32)
    localizer = Localizer(
        opts.backbone, device=ctx.device, stride=opts.stride, max_side=None, weights_dir=opts.weights_dir,
        download=download, precision=opts.precision, tf32=opts.tf32, features=opts.features,
    )
    return Model(method, localizer, localizer.backbone.device, localizer.stride, opts.tf32)


def run_config(opts: RunOptions, dataset: Dataset, model: Model) -> dict:
    """The settings that decide the boxes; a run folder holds one config."""
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "root": str(dataset.root),
        "no_hard": dataset.no_hard,
        "image_list_sha256": dataset.image_list_sha256,
        "method": opts.method,
        "k": opts.k,
        **method_options(opts),
        **model.config(),
    }


def method_options(opts: RunOptions) -> dict:
    """The run options the method takes besides ``k`` (:data:`~eval.methods.METHOD_OPTIONS`), by name."""
    return {name: getattr(opts, name) for name in METHOD_OPTIONS.get(opts.method, ())}


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


def run(opts: RunOptions) -> dict | None:
    """Run (or resume) an evaluation; return the results summary on rank 0, ``None`` elsewhere.

    Raises :class:`RunError`, :class:`~eval.datasets.DatasetError` or the library's one-line errors
    (``WeightsError``, ``ValueError``) for user mistakes; every option is checked before the run
    folder is touched.
    """
    opts = replace(
        opts,
        batch_size=default_batch_size(opts.device) if opts.batch_size is None else opts.batch_size,
        workers=default_workers(opts.device) if opts.workers is None else opts.workers,
        tau=DEFAULT_TAU if opts.tau is None else opts.tau,
    )
    method = get_method(opts.method)  # a bad name fails before any process group is joined
    if isinstance(method, PixelMethod) and opts.precision != "fp32":
        raise ValueError(f"--precision {opts.precision} applies to backbone methods; --method {opts.method} runs in fp32")
    ctx = from_env(opts.device)
    started = join(ctx)  # a caller that joined the group already (``reproduce``) keeps it
    try:
        return _run(opts, ctx, method)
    finally:
        if started:
            teardown(ctx)


@dataclass(frozen=True)
class Start:
    """Rank 0's view at the start: the dataset, the images in scope and those finished before."""

    dataset: Dataset
    scope: list[Item]
    done: dict[str, dict]
    config: dict
    todo: list[Item]


def _start(opts: RunOptions, model: Model, folder: RunFolder) -> Start:
    """Rank 0: dataset, config, leftovers of earlier runs."""
    dataset = open_dataset(opts.dataset, opts.root, opts.no_hard, opts.image_list, opts.skip_bad)
    config = run_config(opts, dataset, model)
    folder.claim(config)
    done = folder.collect()
    scope = dataset.items[: opts.limit] if opts.limit else dataset.items
    todo = [item for item in scope if item.image_id not in done]
    if len(todo) < len(scope):
        print(f"resuming {folder.path}: {len(scope) - len(todo)} of {len(scope)} images done already", file=sys.stderr)
    return Start(dataset, scope, done, config, todo)


def _run(opts: RunOptions, ctx: DistContext, method: Method) -> dict | None:
    started = time.perf_counter()
    folder = RunFolder(opts.out)
    start = model = error = None
    if ctx.is_main:
        try:
            model = load_model(opts, ctx, method, download=True)
            start = _start(opts, model, folder)
        except Exception as err:  # every rank must hear about it, or they wait forever
            if not ctx.active:
                raise
            error = err
        shared = ctx.broadcast({"error": str(error)} if error is not None else {"config": start.config, "todo": start.todo})
    else:
        shared = ctx.broadcast(None)
    if error is not None:
        raise error
    if "error" in shared:
        raise RunError(shared["error"], quiet=True)
    config, todo = shared["config"], shared["todo"]
    if model is None:  # other ranks load the weights rank 0 verified (no concurrent downloads)
        model = load_model(opts, ctx, method, download=False)
        if any(config.get(k) != v for k, v in model.config().items()):
            raise RunError(f"rank {ctx.rank} loaded another model than rank 0 ({model.config()})")
    if ctx.is_main and model.is_random:
        print(model.random_note, file=sys.stderr)

    prior = [start.done[it.image_id] for it in start.scope if it.image_id in start.done] if ctx.is_main else []
    mine, skipped, loop_time = _predict(opts, ctx, model, folder, ctx.shard(todo), prior)
    gathered = ctx.gather({"records": mine, "skipped": skipped, "loop_time": loop_time})
    if ctx.active:
        if ctx.is_main:
            folder.merge(r for part in gathered for r in part["records"])
        ctx.barrier()
        folder.remove_stream(ctx.rank)
    if not ctx.is_main:
        return None
    return _finish(opts, ctx, model, start, folder, gathered, started)


def _predict(
    opts: RunOptions, ctx: DistContext, model: Model, folder: RunFolder, shard: list[Item], prior: Sequence[dict]
) -> tuple[list[dict], list[tuple[str, str]], float]:
    """This process's images: records streamed into its file. Returns (records, skipped, loop seconds)."""
    seen, hits = len(prior), sum(bool(r.get("correct")) for r in prior)
    mine: list[dict] = []
    skipped: list[tuple[str, str]] = []
    loop_start = time.perf_counter()
    bar = Progress(f"{opts.dataset} {opts.method}" + (f" rank0/{ctx.world_size}" if ctx.active else ""), "img",
                   len(shard), show=ctx.is_main and opts.progress)
    with folder.stream(ctx.rank if ctx.active else None) as fh, bar:
        batches = bucketed(decoded_stream(shard, model.stride, opts.workers), opts.batch_size)

        options = method_options(opts)

        def propose(embedded) -> list[Proposal]:
            return model.propose(embedded, opts.k, options)

        for batch, proposals in overlapped(batches, model.embed, propose, model.device):
            good = [d for d in batch if d.rgb is not None]
            for bad in (d for d in batch if d.rgb is None):
                if not opts.skip_bad:
                    raise RunError(f"{bad.error} (use --skip-bad to leave such images out)")
                skipped.append((bad.item.image_id, bad.error))
            if good:
                records = [make_record(d.item, p) for d, p in zip(good, proposals)]
                append_records(fh, records)
                mine.extend(records)
                seen += len(records)
                hits += sum(r["correct"] for r in records)
            bar.update(len(batch), {"corloc": f"{100.0 * hits / max(seen, 1):.1f}"})
    return mine, skipped, time.perf_counter() - loop_start


def _finish(
    opts: RunOptions, ctx: DistContext, model: Model, start: Start, folder: RunFolder, gathered: list[dict], started: float
) -> dict:
    """Rank 0's end: predictions.jsonl in dataset order, CorLoc over the images in scope, results.json."""
    records = folder.finish({item.image_id: i for i, item in enumerate(start.dataset.items)})
    skipped = [s for part in gathered for s in part["skipped"]]
    skipped_ids = {image_id for image_id, _ in skipped}
    evaluated = [item for item in start.scope if item.image_id not in skipped_ids]
    result = corloc(evaluated, {k: r.get("box") for k, r in records.items()})
    processed = sum(len(part["records"]) for part in gathered)
    loop_time = max(part["loop_time"] for part in gathered)
    config = start.config
    model_keys = ("backbone", "weights_sha256", "stride", "k", "tau", "precision", "fp32_math", "detector_sha256", "detector_base")
    summary = {
        "corloc": round(result.value, 4),
        "correct": result.correct,
        "total": result.total,
        "missing": result.missing,
        "method": opts.method,
        **{key: config[key] for key in model_keys if key in config},
        "random_backbone": model.is_random,
        **dataset_summary(start.dataset),
        "limit": opts.limit,
        "skipped_unreadable_image": len(skipped),
        "library_version": discovery.__version__,
        "torch_version": torch.__version__,
        "git_revision": git_revision(),
        "device": ctx.device,
        "world_size": ctx.world_size,
        "batch_size": opts.batch_size,
        "workers": opts.workers,
        "images_this_run": processed,
        "images_resumed": len(start.scope) - len(start.todo),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "loop_time_s": round(loop_time, 3),
        "images_per_s": round(processed / loop_time, 3) if loop_time > 0 and processed else 0.0,
        "predictions": str(folder.predictions),
        "results": str(folder.results),
    }
    detections = {k: (r["boxes"], r["scores"]) for k, r in records.items() if "boxes" in r}
    if detections:
        summary.update(detection_score(evaluated, detections).to_json())
    if skipped:
        summary["skipped_examples"] = [reason for _, reason in skipped[:5]]
    folder.write_results(summary)
    return summary
