"""The ViT section of ``python -m bench``: LOST on keys and TokenCut through ``eval run``'s path
against the references' loops (:mod:`bench.reference_vit`), on a seeded random ViT-S/16 and the
same synthetic VOC-sized images, in one run.

Every box must equal the reference's wherever the reference defines it (a box that differs only
where the reference's own order is a tie, :func:`bench.reference_vit.reference_defined`, is counted
and shown, not failed). Besides each method's images/s and the ratio, it reports the
trunk's share of our per-image time (on a CPU the trunk is the floor: what is left to speed up is
the rest) and TokenCut's eigen-solve share (target ≤ 20 %).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from discovery.localizer import Localizer
from discovery.precision import fp32_math
from discovery.tokencut import fiedler_vectors, token_graph

from .data import VOC_SIZES, run_eval
from .reference_vit import reference_defined, reference_vit_loop
from .report import mark

BACKBONE = "random-vits16"
METHODS = ("lost", "tokencut")
TARGETS = {"speedup": 1.5, "eigen_share": 0.20, "gpu_img_s": 2000.0}


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stage_seconds(localizer: Localizer, paths: list[Path], repeats: int) -> tuple[float, float]:
    """Median seconds per image of the trunk alone and of TokenCut's eigen-solve alone (graph
    built beforehand), over ``paths`` (one per image size)."""
    trunk, solve = [], []
    for path in paths:
        tensor = localizer.prepare(path).tensor[None]
        features = localizer.features(tensor)
        graph = token_graph(features)
        trunk.append(_best(lambda: localizer.features(tensor), repeats))
        solve.append(_best(lambda: fiedler_vectors(graph), repeats))
    return statistics.median(trunk), statistics.median(solve)


def vit_section(root: Path, paths: list[Path], n: int, args: argparse.Namespace) -> dict:
    """The figures of the ViT section over the first ``n`` of ``paths`` (made under ``root``)."""
    localizer = Localizer(BACKBONE, device=args.device, max_side=None)
    net = localizer.backbone.trunk.net  # the reference loops run it on a copy with torch's nn.Linear
    warm = len(VOC_SIZES)
    ids = [p.stem for p in paths[:n]]
    figures: dict = {"backbone": BACKBONE, "images": n}
    for method in METHODS:
        with fp32_math(False):
            reference_vit_loop(paths[:warm], net, method, device=args.device)
            start = time.perf_counter()
            reference_boxes, post_s = reference_vit_loop(paths[:n], net, method, device=args.device)
            reference_s = time.perf_counter() - start
        run_eval(root, root / f"vit-{method}-warm", warm, args, backbone=BACKBONE, method=method)
        ours = run_eval(root, root / f"vit-{method}", n, args, backbone=BACKBONE, method=method)
        mismatched = [(p, i) for p, i, box in zip(paths, ids, reference_boxes) if [round(v, 2) for v in box] != ours["boxes"][i]]
        # where the reference's own answer is a tie its sort or solver breaks, a different box is not an error
        undefined = [i for p, i in mismatched if not reference_defined(p, net, method)]
        figures[method] = {
            "reference_img_s": round(n / reference_s, 3),
            "reference_post_share": round(post_s / reference_s, 4),
            "ours_img_s": ours["images_per_s"],
            "speedup": round(ours["images_per_s"] * reference_s / n, 3),
            "boxes_mismatched": [i for _, i in mismatched if i not in undefined],
            "boxes_differing_at_ties": undefined,
        }
    trunk_s, solve_s = stage_seconds(localizer, paths[:warm], repeats=2 if args.quick else 3)
    figures["trunk_ms"] = round(1000 * trunk_s, 1)
    figures["eigen_ms"] = round(1000 * solve_s, 1)
    for method in METHODS:
        figures[method]["trunk_share"] = round(trunk_s * figures[method]["ours_img_s"], 4)
    figures["eigen_share"] = round(solve_s * figures["tokencut"]["ours_img_s"], 4)
    figures["on_gpu"] = torch.device(args.device).type == "cuda"
    return figures


def boxes_equal(v: dict) -> bool:
    return not any(v[m]["boxes_mismatched"] for m in METHODS)


def vit_rows(v: dict) -> list[tuple[str, str, str]]:
    """The ViT section's rows of the printed table."""
    rows = []
    for method in METHODS:
        f = v[method]
        name = "LOST on keys" if method == "lost" else "TokenCut"
        equal = v["images"] - len(f["boxes_mismatched"]) - len(f["boxes_differing_at_ties"])
        ties = f["boxes_differing_at_ties"]
        tie_note = f" (the other {len(ties)}: the reference's order is a tie there)" if ties else ""
        rows += [
            (f"ViT {name}: reference loop", f"{f['reference_img_s']:.3f} img/s",
             f"{100 * f['reference_post_share']:.0f}% of its time after the forward pass"),
            (f"ViT {name}: ours (eval run path)", f"{f['ours_img_s']:.3f} img/s",
             f"trunk alone {100 * f['trunk_share']:.0f}% of our per-image time"),
            (f"ViT {name}: speedup", f"{f['speedup']:.2f}x",
             f"target >= {TARGETS['speedup']}x: {mark(f['speedup'] >= TARGETS['speedup'])}; boxes equal {equal}/{v['images']}{tie_note}"),
        ]
    rows.append(("ViT TokenCut eigen-solve", f"{v['eigen_ms']:.1f} ms/img",
                 f"{100 * v['eigen_share']:.1f}% of per-image time, target <= 20%: {mark(v['eigen_share'] <= TARGETS['eigen_share'])}"))
    if v["on_gpu"]:
        best = max(v[m]["ours_img_s"] for m in METHODS)
        rows.append(("ViT on the GPU, end to end", f"{best:.1f} img/s",
                     f"{v['images']} images, target >= {TARGETS['gpu_img_s']:.0f}: {mark(best >= TARGETS['gpu_img_s'])}"))
    else:
        rows.append(("ViT on a GPU", "not measured", f"no GPU in this run (target >= {TARGETS['gpu_img_s']:.0f} img/s)"))
    return rows
