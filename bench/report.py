"""The table ``python -m bench`` prints: each figure with its target, met or MISSED."""

from __future__ import annotations

TARGETS = {"speedup": 1.5, "backbone_efficiency": 0.80, "lost_share": 0.05}


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(f: dict, extra: list[tuple[str, str, str]] = ()) -> None:
    """Print the figures ``f`` of :func:`bench.run.main` as a table, then the ``extra`` rows (other sections)."""
    rss_growth = f["rss_mb_500"] - f["rss_mb_50"]
    rows = [
        ("machine", f["machine"], f"{f['threads']} threads"),
        ("startup: `discovery --help`", f"{f['startup_help_s']:.2f} s",
         f"{f['startup_help_s'] / max(f['startup_python_s'], 1e-3):.1f}x a bare `python -c pass` ({f['startup_python_s']:.2f} s); "
         f"target < 1 s: {mark(f['startup_help_s'] < 1.0)}"),
        ("fp32 GEMM peak (oneDNN | MKL mm)", f"{f['gemm_gflops']:.1f} | {f['gemm_gflops_mm']:.1f} GFLOP/s", ""),
        ("baseline (reference loop)", f"{f['baseline_images_per_s']:.3f} img/s", ""),
        ("ours (eval run path)", f"{f['ours_images_per_s']:.3f} img/s", ""),
        ("speedup", f"{f['speedup']:.2f}x", f"target >= {TARGETS['speedup']}x: {mark(f['speedup'] >= TARGETS['speedup'])}"),
        ("backbone", f"{f['backbone_gflops']:.1f} GFLOP/s ({f['backbone_gflop_per_image']} GFLOP/img)",
         f"{100 * f['backbone_efficiency']:.0f}% of GEMM, target >= 80%: {mark(f['backbone_efficiency'] >= TARGETS['backbone_efficiency'])}"),
        ("LOST post-processing", f"{f['lost_ms']:.1f} ms/img",
         f"{100 * f['lost_share']:.1f}% of per-image time, target <= 5%: {mark(f['lost_share'] <= TARGETS['lost_share'])}"),
        (f"peak RSS at {f['rss_images'][0]} / {f['rss_images'][1]} images", f"{f['rss_mb_50']:.0f} / {f['rss_mb_500']:.0f} MB",
         f"growth {rss_growth:+.0f} MB: {mark(rss_growth <= 0.05 * f['rss_mb_50'])}"),
        ("app latency (features + LOST + Grad-CAM)", f"{f['app_latency_s']:.3f} s", ""),
        ("boxes equal to the baseline", f"{f['boxes_equal']} ({f['images'] - len(f['boxes_mismatched'])}/{f['images']})", ""),
    ]
    if "precision_boxes_equal" in f:
        rows.append((f"{f['precision']} boxes equal to fp32", f["precision_boxes_equal"], "target >= 99.5%"))
    if "gpu" in f:
        rows = [r for r in rows if not r[0].startswith(("fp32 GEMM", "backbone"))] + gpu_rows(f["gpu"])
    rows += list(extra)
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<34} {note}")


def gpu_rows(g: dict) -> list[tuple[str, str, str]]:
    """The GPU table: each stage's images/s as a share of the fp32 trunk's."""
    trunk = g["trunk_fp32_img_s"]

    def share(v: float) -> str:
        return f"{100 * v / trunk:.0f}% of the fp32 trunk" if trunk else ""

    return [
        ("machine", f"{g['machine']}, {g['date']}, torch {g['torch']}", f"fp32 math: {g['fp32_math']}"),
        (f"trunk fp32, batch {g['batch']}, {g['size'][0]}x{g['size'][1]}", f"{trunk:.1f} img/s", "the ceiling"),
        ("trunk bf16 autocast", f"{g['trunk_bf16_img_s']:.1f} img/s", share(g["trunk_bf16_img_s"])),
        (f"input pipeline alone ({g['workers']} workers)", f"{g['input_img_s']:.1f} img/s", share(g["input_img_s"])),
        ("LOST alone (batched)", f"{g['lost_img_s']:.1f} img/s", share(g["lost_img_s"])),
        (f"end to end (eval run, {g['end_to_end_images']} images, batch {g['end_to_end_batch']})", f"{g['end_to_end_img_s']:.1f} img/s",
         share(g["end_to_end_img_s"]) + ", target >= 1000 img/s"),
        *_optional_rows(g),
    ]


def _optional_rows(g: dict) -> list[tuple[str, str, str]]:
    rows = []
    if "end_to_end_tf32_img_s" in g:
        rows.append(("end to end with TF32", f"{g['end_to_end_tf32_img_s']:.1f} img/s", f"boxes equal to IEEE fp32: {g['tf32_boxes_equal']}"))
    if "end_to_end_low_img_s" in g:
        rows.append(("end to end, low precision", f"{g['end_to_end_low_img_s']:.1f} img/s",
                     f"boxes equal to fp32: {g['precision_boxes_equal']}, target >= 99.5%"))
    if "end_to_end_coco_img_s" in g:
        rows.append((f"end to end, {g['end_to_end_coco_images']} COCO-sized images", f"{g['end_to_end_coco_img_s']:.1f} img/s", ""))
    return rows
