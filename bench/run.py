"""``python -m bench``: our evaluation path against the reference's loop, in one run (ResNet LOST,
then the ViT section of :mod:`bench.vit`: LOST on keys and TokenCut).

Everything is made in the run (synthetic VOC-sized images in the VOC layout, the seeded ``random``
backbone), nothing is downloaded, and every figure is a ratio against a baseline measured in the
same process, because the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from discovery import options
from discovery.backbone import check_device
from discovery.backbones import load_backbone
from discovery.explain import Explainer
from discovery.localizer import Localizer
from discovery.lost import localize
from discovery.precision import fp32_math

from .data import COCO_SIZES, VOC_SIZES, boxes_agree, make_voc, run_eval
from .pipeline import device_figures
from .reference import IMAGENET_MEAN, IMAGENET_STD, reference_loop
from .report import report
from .vit import boxes_equal as vit_boxes_equal
from .vit import vit_rows, vit_section



def gemm_gflops(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Best fp32 matrix-multiply throughput in GFLOP/s, by two engines.

    ``mm``: ``torch.mm`` of ``size``² matrices (MKL). ``onednn``: the same product as a 1×1
    channels-last convolution (oneDNN, the engine the backbone's convolutions run on; on AMD CPUs
    it can be much faster than MKL). The larger is the machine's attainable peak.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    weight = torch.randn(size, size, 1, 1).contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, size, size // 32, 32).contiguous(memory_format=torch.channels_last)
    flops = 2 * size**3
    with torch.inference_mode():
        out = {}
        for name, fn in (("mm", lambda: a @ b), ("onednn", lambda: nn.functional.conv2d(x, weight))):
            fn()
            out[name] = flops / min(_timed(fn) for _ in range(repeats)) / 1e9
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def conv_flops(module: nn.Module, shape: tuple[int, int, int, int]) -> float:
    """Multiply-add FLOPs (2 per MAC) of every convolution for an input of ``shape``."""
    total = 0.0

    def hook(conv: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2.0 * out.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    device = next(module.parameters()).device
    try:
        with torch.inference_mode():
            module(torch.zeros(shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def backbone_throughput(localizer: Localizer, batch: int, repeats: int) -> tuple[float, float]:
    """``(GFLOP per 384×512 image, achieved GFLOP/s)`` of our batched channels-last forward."""
    shape = (batch, 3, 384, 512)
    flops = conv_flops(localizer.backbone.trunk, (1, *shape[1:]))
    x = torch.randn(shape, device=localizer.backbone.device)
    localizer.features(x)
    best = min(_timed(lambda: localizer.features(x)) for _ in range(repeats))
    return flops / 1e9, flops * batch / best / 1e9


def lost_ms(localizer: Localizer, paths: list[Path], repeats: int = 3) -> float:
    """Median milliseconds of LOST post-processing per image (features computed beforehand)."""
    embeddings = [localizer.embed(p) for p in paths]
    times = []
    for emb in embeddings:
        best = min(_timed(lambda: localize(emb.features, emb.image.size, localizer.stride)) for _ in range(repeats))
        times.append(best)
    return 1000 * statistics.median(times)


def app_latency(localizer: Localizer, path: Path, repeats: int = 3) -> float:
    """Seconds for one upload's work in the app: one forward pass, LOST and Grad-CAM."""
    explainer = Explainer(localizer)

    def once():
        embedding = localizer.embed(path)
        explainer.explain(embedding, method="gradcam")
        localizer.localize(embedding)

    once()
    return min(_timed(once) for _ in range(repeats))


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def startup_s(argv: list[str], repeats: int = 3) -> float:
    """Fastest wall time of a whole new process running ``argv`` (e.g. ``discovery --help``)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        best = min(best, time.perf_counter() - start)
    return best


def gpu_section(root: Path, coco_root: Path, images: int, coco_images: int, args: argparse.Namespace) -> dict:
    """The GPU table: each stage's rate, ``eval run`` end to end on VOC- and COCO-sized images in
    IEEE fp32 (the protocol) and with TF32, and the boxes of TF32 and of ``args.precision`` against
    IEEE fp32's on every image."""
    from discovery.eval.datasets import open_dataset

    full = run_eval(root, root / "full", images, args)
    items = open_dataset("voc07", root).items[:images]
    g = device_figures(items, args.device, full["workers"], batch=32, repeats=3 if args.quick else 10)
    g.update(end_to_end_img_s=full["images_per_s"], end_to_end_batch=full["batch_size"], end_to_end_images=images)
    tf32 = run_eval(root, root / "full-tf32", images, args, tf32=True)
    g["end_to_end_tf32_img_s"] = tf32["images_per_s"]
    g["tf32_boxes_equal"] = boxes_agree(tf32, full)
    if args.precision != "fp32":
        low = run_eval(root, root / "full-low", images, args, args.precision)
        g["end_to_end_low_img_s"] = low["images_per_s"]
        g["precision_boxes_equal"] = boxes_agree(low, full)
    coco = run_eval(coco_root, coco_root / "run", coco_images, args)
    g["end_to_end_coco_img_s"] = coco["images_per_s"]
    g["end_to_end_coco_images"] = coco_images
    return g


def peak_rss_mb(root: Path, out: Path, limit: int, args: argparse.Namespace) -> float:
    """Peak RSS (MB) of a fresh process running ``eval run`` over the first ``limit`` images."""
    script = (
        "import re\n"
        "from pathlib import Path\n"
        "from discovery.eval.run_options import RunOptions\n"
        "from discovery.eval.runner import run\n"
        f"run(RunOptions(dataset='voc07', root=Path({str(root)!r}), backbone='random', out=Path({str(out)!r}),"
        f" limit={limit}, batch_size={args.batch_size}, workers={args.workers}, device={args.device!r}, progress=False))\n"
        # VmHWM, not ru_maxrss: Linux carries the forking parent's RSS into a child's ru_maxrss
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"eval run failed: {lines[-1] if lines else done.returncode}")
    return float(done.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under a minute), same keys")
    parser.add_argument("--images", type=options.positive_int, default=None, help="images timed for baseline and ours (default 40; quick 8)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    options.add_device(parser)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast of our path's trunk (default fp32)")
    parser.add_argument("--batch-size", type=options.positive_int, default=None, help="default: eval run's (1 on CPU)")
    options.add_workers(parser, None)
    parser.add_argument("--gpu-images", type=options.positive_int, default=None,
                        help="VOC-sized images run end to end on a GPU (default 5011, VOC07 trainval's count; quick 500)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    on_gpu = args.device.startswith("cuda")
    n = args.images or (8 if args.quick else 40)
    rss_counts = (24, 64) if args.quick else (50, 500)
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        # on a GPU the end-to-end rate needs enough images that worker start-up does not dominate
        gpu_images = (args.gpu_images or (500 if args.quick else 5011)) if on_gpu else 0
        paths = make_voc(tmp, max(n, rss_counts[1], gpu_images))
        if on_gpu:  # made before CUDA starts: the generator forks
            make_voc(tmp / "coco", gpu_images // 2, sizes=COCO_SIZES)
        figures: dict = {"images": n, "device": args.device, "precision": args.precision, "threads": torch.get_num_threads(),
                         "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
        discovery = str(Path(sys.executable).with_name("discovery"))
        figures["startup_python_s"] = round(startup_s([sys.executable, "-c", "pass"]), 3)
        figures["startup_help_s"] = round(startup_s([discovery, "--help"]), 3)
        print(f"bench: {n} synthetic VOC-sized images, backbone 'random' (a pipeline check: timings, not accuracy)")

        peaks = gemm_gflops()
        figures["gemm_gflops_mm"] = round(peaks["mm"], 1)
        figures["gemm_gflops"] = round(max(peaks.values()), 1)

        trunk = copy.deepcopy(load_backbone("random").trunk).to(memory_format=torch.contiguous_format)
        # Both paths are warmed on every image size first (the engines build kernels per shape).
        warm = len(VOC_SIZES)
        with fp32_math(False):  # the reference in the same IEEE fp32 as our default runs
            reference_loop(paths[:warm], trunk, IMAGENET_MEAN, IMAGENET_STD, device=args.device)
            start = time.perf_counter()
            baseline_boxes = reference_loop(paths[:n], trunk, IMAGENET_MEAN, IMAGENET_STD, device=args.device)
            baseline_s = time.perf_counter() - start
        figures["baseline_images_per_s"] = round(n / baseline_s, 3)

        run_eval(tmp, tmp / "warm", warm, args)
        ours = run_eval(tmp, tmp / "run", n, args)
        figures["ours_images_per_s"] = ours["images_per_s"]
        figures["speedup"] = round(ours["images_per_s"] / figures["baseline_images_per_s"], 3)
        ids = [p.stem for p in paths[:n]]
        mismatched = [i for i, box in zip(ids, baseline_boxes) if [round(v, 2) for v in box] != ours["boxes"][i]]
        figures["boxes_equal"] = not mismatched
        figures["boxes_mismatched"] = mismatched

        localizer = Localizer("random", device=args.device)
        if on_gpu:
            figures["gpu"] = gpu_section(tmp, tmp / "coco", gpu_images, gpu_images // 2, args)
        per_image, achieved = backbone_throughput(localizer, batch=1, repeats=3 if args.quick else 5)
        figures["backbone_gflop_per_image"] = round(per_image, 2)
        figures["backbone_gflops"] = round(achieved, 1)
        figures["backbone_efficiency"] = round(achieved / figures["gemm_gflops"], 3)
        figures["lost_ms"] = round(lost_ms(localizer, paths[: min(n, 8)]), 2)
        figures["lost_share"] = round(figures["lost_ms"] / 1000 * ours["images_per_s"], 4)

        small, large = (peak_rss_mb(tmp, tmp / f"rss{c}", c, args) for c in rss_counts)
        figures["rss_images"] = list(rss_counts)
        figures["rss_mb_50"] = round(small, 1)
        figures["rss_mb_500"] = round(large, 1)

        figures["app_latency_s"] = round(app_latency(localizer, paths[0]), 3)
        figures["vit"] = vit_section(tmp, paths, n, args)

        if args.precision != "fp32" and not on_gpu:  # on a GPU: over every image, in gpu_section
            figures["precision_boxes_equal"] = boxes_agree(run_eval(tmp, tmp / "low", n, args, args.precision), ours)

    report(figures, vit_rows(figures["vit"]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not figures["boxes_equal"]:
        print(f"FAIL: boxes differ from the baseline on {len(mismatched)} images: {mismatched[:5]}", file=sys.stderr)
        return 1
    if not vit_boxes_equal(figures["vit"]):
        print("FAIL: ViT boxes differ from the references' loops", file=sys.stderr)
        return 1
    return 0
