"""The ``--log-dynamics`` CSV of a PUL run, and its plot (losses, the swing phenomenon, the function speed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import PULError
from .figures import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class DynamicsLog:
    """The ``--log-dynamics`` CSV: ``step, epoch, ce, kl, loss, lr, hist_0..hist_{C-1}, speed``
    and, when the run is scored while it trains, ``corloc`` (empty on the steps not scored).

    On resume, rows from steps at or after the resume point are dropped first, so the file reads
    as one uninterrupted run.
    """

    def __init__(self, path: Path, classes: int, start_step: int, with_corloc: bool = False):
        self.path = Path(path)
        self.columns = ["step", "epoch", "ce", "kl", "loss", "lr", *(f"hist_{c}" for c in range(classes)), "speed", "grad_norm"]
        if with_corloc:
            self.columns.append("corloc")
        kept: list[list[str]] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
            if rows and rows[0] == self.columns:
                kept = [row for row in rows[1:] if row and int(row[0]) < start_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._writer.writerows(kept)
        self._fh.flush()

    def write(
        self, step: int, epoch: int, ce: float, kl: float, loss: float, lr: float, hist: list[int], speed: float,
        grad_norm: float, corloc: float | None = None,
    ) -> None:
        row = [step, epoch, f"{ce:.9g}", f"{kl:.9g}", f"{loss:.9g}", f"{lr:.9g}", *hist, f"{speed:.9g}", f"{grad_norm:.9g}"]
        if self.columns[-1] == "corloc":
            row.append("" if corloc is None else f"{corloc:.4f}")
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_dynamics(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``--log-dynamics`` CSV into column arrays (float64; an empty ``corloc`` cell is NaN).

    Raises:
        FileNotFoundError, PULError: missing file, or not a dynamics CSV (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    needed = {"step", "ce", "kl", "speed", "hist_0", "hist_1"}
    if not needed <= set(header):
        raise PULError(f"{path}: not a PUL dynamics CSV (needs columns step, ce, kl, hist_0.., speed)")
    if len(rows) < 2:
        raise PULError(f"{path}: no rows to plot")
    try:
        data = np.array([[float(v) if v != "" else np.nan for v in row] for row in rows[1:] if row], dtype=np.float64)
    except ValueError as err:
        raise PULError(f"{path}: unreadable value ({err})") from None
    return {name: data[:, j] for j, name in enumerate(header)}


def dynamics_figure(data: dict[str, np.ndarray]) -> Figure:
    """The figure of :func:`read_dynamics`'s columns (a matplotlib ``Figure``; close it after use):
    losses, the predicted-class shares per step (the swing phenomenon), the function speed (log
    scale, with a moving average) and, when the run was scored while training, CorLoc at the
    scored steps. The step axis has integer ticks; the legends sit right of their panels, off the lines."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    steps = data["step"]
    hist_names = sorted((k for k in data if k.startswith("hist_")), key=lambda k: int(k[5:]))
    hist = np.stack([data[k] for k in hist_names])
    shares = hist / np.maximum(hist.sum(axis=0, keepdims=True), 1)

    scored = np.isfinite(data["corloc"]) if "corloc" in data else np.zeros(len(steps), dtype=bool)
    panels = 4 if scored.any() else 3
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3 * panels), sharex=True)
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
    marker = "." if len(steps) < 50 else None
    axes[0].plot(steps, data["ce"], marker=marker, label="cross-entropy")
    axes[0].plot(steps, data["kl"], marker=marker, label="KL(frozen || student) at T")
    axes[0].set_ylabel("loss")
    axes[0].legend(**outside)
    axes[1].stackplot(steps, shares, labels=[f"class {k[5:]}" for k in hist_names], step="mid")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("share of batch")
    axes[1].set_title("predicted classes per batch (swing phenomenon)")
    axes[1].legend(fontsize="small", **outside)
    speed = np.maximum(data["speed"], 1e-12)
    axes[2].plot(steps, speed, alpha=0.4, marker=marker, label="KL(f_t+1 || f_t)")
    window = max(1, len(speed) // 20)
    if window > 1:
        smooth = np.convolve(speed, np.ones(window) / window, mode="valid")
        axes[2].plot(steps[window - 1:], smooth, label=f"moving average ({window})")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("function speed")
    axes[2].legend(**outside)
    if scored.any():
        axes[3].plot(steps[scored], data["corloc"][scored], marker="o")
        axes[3].set_ylabel("CorLoc (%)")
        axes[3].set_title("LOST CorLoc on the scoring images (after the step)")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_dynamics(csv_path: str | Path, out: str | Path) -> Path:
    """Draw a dynamics CSV (:func:`dynamics_figure`) to a PNG."""
    plt = pyplot()
    fig = dynamics_figure(read_dynamics(csv_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
