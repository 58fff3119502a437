"""The figures of ``discovery pul evidence`` (matplotlib, the ``plot`` extra): the Grad-CAM grid
across checkpoints (the seed paper's Fig. 4) and the per-stage activation ratios (its Fig. 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import PULError
from .measures import HIGH_NORM_FACTOR, CamCell, StageStats, TokenNorms


def pyplot(hint: str = ""):
    """matplotlib's pyplot on the Agg backend, or a one-line :class:`PULError` (ending in ``hint``)."""
    try:
        import matplotlib
    except ImportError:
        raise PULError(f"plotting needs matplotlib: pip install 'object-discovery[plot]'{hint}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_cam_grid(cells: list[CamCell], rgbs: list[np.ndarray], out: Path, note: str = "") -> Path:
    """Rows: per image, its assigned label then another label; columns: checkpoints in order.
    Each panel is the image with the Grad-CAM (jet, alpha 0.5) over it."""
    plt = pyplot()
    columns = list(dict.fromkeys(c.checkpoint for c in cells))
    if not columns:
        raise PULError("no checkpoint with a PUL projector: nothing to draw (use pul train --save-every-epoch)")
    rows = [(i, assigned) for i in range(len(rgbs)) for assigned in (True, False)]
    found = {(c.checkpoint, c.image, c.assigned): c for c in cells}
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False)
    for r, (image, assigned) in enumerate(rows):
        for k, name in enumerate(columns):
            ax = axes[r][k]
            ax.imshow(rgbs[image])
            cell = found.get((name, image, assigned))
            if cell is not None:
                ax.imshow(cell.cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize="small")
            if k == 0 and cell is not None:
                ax.set_ylabel(f"img {image}: {'assigned' if assigned else 'other'} y={cell.label}", fontsize="small")
    fig.suptitle("Grad-CAM of the PUL projector's logit across checkpoints" + (f"\n{note}" if note else ""), fontsize="medium")
    fig.tight_layout()
    return _save(fig, out, plt)


def draw_stats(rows: list[StageStats], out: Path, note: str = "") -> Path:
    """Max / median |activation| per stage (log scale), one line per checkpoint, and the top-4 |a|."""
    plt = pyplot()
    names = list(dict.fromkeys(r.checkpoint for r in rows))
    stages = list(dict.fromkeys(r.stage for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(stages))
    for n, name in enumerate(names):
        mine = {r.stage: r for r in rows if r.checkpoint == name}
        axes[0].plot(x, [mine[s].ratio for s in stages], marker="o", label=name)
        offset = (n - (len(names) - 1) / 2) * 0.8 / max(1, len(names))
        for j, stage in enumerate(stages):
            axes[1].scatter([j + offset] * len(mine[stage].top), mine[stage].top, s=12,
                            color=f"C{n}", label=name if j == 0 else None)
    for ax, title in zip(axes, ("largest / median non-zero |activation|", "top-4 |activation| per stage")):
        ax.set_xticks(x, stages, rotation=45 if len(stages) > 6 else 0)
        ax.set_yscale("log")
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
    if note:
        fig.suptitle(note, fontsize="medium")
    fig.tight_layout()
    return _save(fig, out, plt)


def draw_token_norms(rows: list[TokenNorms], out: Path, note: str = "") -> Path:
    """Histogram (log count) of the patch-token norms of each checkpoint, the high-norm line of the first."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(float(r.norms.max()) for r in rows)
    bins = np.linspace(0.0, top, 60)
    for n, r in enumerate(rows):
        ax.hist(r.norms, bins=bins, histtype="step", color=f"C{n}",
                label=f"{r.checkpoint} (>{HIGH_NORM_FACTOR:g}x median: {100 * r.high_fraction:.2f} %)")
    ax.axvline(HIGH_NORM_FACTOR * rows[0].median, color="C0", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("patch-token norm at the last block's output")
    ax.set_ylabel("tokens")
    ax.legend(fontsize="small")
    ax.set_title("high-norm tokens (what registers remove)" + (f"\n{note}" if note else ""), fontsize="medium")
    fig.tight_layout()
    return _save(fig, out, plt)


def _save(fig, out: Path, plt) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
