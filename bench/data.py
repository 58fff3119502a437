"""The bench's data and eval run's path, shared by its sections: synthetic VOC- and COCO-sized
images in the VOC layout (made in the run, nothing downloaded) and ``eval run`` in this process."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# VOC07 trainval's most common sizes (H, W): most images are 500 px on the long side.
VOC_SIZES = ((375, 500), (500, 375), (333, 500), (375, 500), (500, 333), (375, 500), (366, 500), (500, 375))
# COCO train2014's most common sizes: most images are 640 px on the long side.
COCO_SIZES = ((480, 640), (427, 640), (640, 480), (480, 640), (424, 640), (640, 427), (480, 640), (512, 640))


def _write_images(folder: Path, seed: int, indices: range, sizes: tuple[tuple[int, int], ...]) -> None:
    from discovery.eval.synth import make_image, write_voc

    images = [make_image(np.random.default_rng([seed, i]), i, sizes[i % len(sizes)]) for i in indices]
    write_voc(folder, [f"{i + 1:06d}" for i in indices], images)


def make_voc(root: Path, n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = VOC_SIZES) -> list[Path]:
    """``n`` synthetic images of ``sizes`` (in turn) with annotations under ``root/VOCdevkit/VOC2007``.

    Image ``i`` depends on ``(seed, i)`` alone, so large sets are made by several processes.
    """
    folder = root / "VOCdevkit" / "VOC2007"
    per_process = 64
    chunks = [range(start, min(n, start + per_process)) for start in range(0, n, per_process)]
    processes = min(len(chunks), os.cpu_count() or 1)
    if processes > 1:
        # fork: the children only run numpy and PIL, and no CUDA context exists yet
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_write_images, *zip(*[(folder, seed, c, sizes) for c in chunks])))
    else:
        for chunk in chunks:
            _write_images(folder, seed, chunk, sizes)
    ids = [f"{i + 1:06d}" for i in range(n)]
    (folder / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return [folder / "JPEGImages" / f"{i}.jpg" for i in ids]


def run_eval(
    root: Path, out: Path, limit: int, args: argparse.Namespace, precision: str = "fp32", tf32: bool = False,
    backbone: str = "random", method: str = "lost",
) -> dict:
    """``eval run``'s code path on the synthetic VOC07, in this process; the summary plus its boxes."""
    from discovery.eval.run_options import RunOptions
    from discovery.eval.runner import run

    summary = run(RunOptions(
        dataset="voc07", root=root, backbone=backbone, method=method, out=out, limit=limit, batch_size=args.batch_size,
        workers=args.workers, device=args.device, precision=precision, tf32=tf32, progress=False,
    ))
    summary["boxes"] = {r["image_id"]: r["box"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    return summary


def boxes_agree(a: dict, b: dict) -> str:
    """``"equal/total"``: images where two :func:`run_eval` summaries give the same box."""
    return f"{sum(a['boxes'][i] == b['boxes'].get(i) for i in a['boxes'])}/{len(a['boxes'])}"
