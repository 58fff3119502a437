"""The seed paper's Table 5 as ``reproduce`` writes it: our CorLoc of each base and method (LOST,
TokenCut) before and after PUL, the published base numbers beside them, and the differences
(``table.md``, ``table.csv``)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

#: LOST's published CorLoc (%) (docs/protocol.md): the dilated ResNet50s at k = 100 and DINO's ViTs
#: on keys (Siméoni et al. 2021, Table 1): (base, dataset) -> CorLoc. The numbers PUL has to beat.
PUBLISHED_LOST = {
    ("dino", "voc07"): 36.8, ("dino", "voc12"): 42.7, ("dino", "coco20k"): 26.5,
    ("imagenet", "voc07"): 33.5, ("imagenet", "voc12"): 39.1, ("imagenet", "coco20k"): 25.5,
    ("dino-vits16", "voc07"): 61.9, ("dino-vits16", "voc12"): 64.0, ("dino-vits16", "coco20k"): 50.7,
    ("dino-vits8", "voc07"): 55.5, ("dino-vits8", "voc12"): 57.0, ("dino-vits8", "coco20k"): 49.5,
    ("dino-vitb16", "voc07"): 60.1, ("dino-vitb16", "voc12"): 63.3, ("dino-vitb16", "coco20k"): 50.0,
}
#: TokenCut's published CorLoc (%) on DINO's keys, τ = 0.2 (Wang et al. 2022, Table 1).
PUBLISHED_TOKENCUT = {
    ("dino-vits16", "voc07"): 68.8, ("dino-vits16", "voc12"): 72.1, ("dino-vits16", "coco20k"): 58.8,
    ("dino-vits8", "voc07"): 67.3, ("dino-vits8", "voc12"): 71.6, ("dino-vits8", "coco20k"): 60.7,
    ("dino-vitb16", "voc07"): 68.8, ("dino-vitb16", "voc12"): 72.4, ("dino-vitb16", "coco20k"): 59.0,
}
PUBLISHED = {"lost": PUBLISHED_LOST, "tokencut": PUBLISHED_TOKENCUT}
PIPELINE_CHECK = "pipeline check, not a result"


@dataclass(frozen=True)
class Row:
    """One cell of the grid and one method. CorLoc values in percent (``lost``: the base's, ``pul``:
    the refined weights', both with ``method``); ``None`` where that step has not run yet.
    ``base_sha256`` / ``pul_sha256``: the weights evaluated; ``note``: the label every row carries
    (e.g. :data:`PIPELINE_CHECK`), empty for a real run."""

    base: str
    dataset: str
    lost: float | None = None
    pul: float | None = None
    epochs: int | None = None
    images: int | None = None
    base_sha256: str = ""
    pul_sha256: str = ""
    git_revision: str = ""
    note: str = ""
    method: str = "lost"

    @property
    def published(self) -> float | None:
        return PUBLISHED.get(self.method, {}).get((self.base, self.dataset))

    @property
    def gain(self) -> float | None:
        """PUL minus the base, both ours."""
        return None if self.lost is None or self.pul is None else self.pul - self.lost

    @property
    def gap(self) -> float | None:
        """Our base minus LOST's published base number (how faithful our baseline is)."""
        return None if self.lost is None or self.published is None else self.lost - self.published


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


CSV_COLUMNS = (
    "base", "dataset", "method", "lost_published", "lost_ours", "pul_ours", "pul_minus_lost", "lost_minus_published",
    "pul_epochs", "pul_images", "base_sha256", "pul_sha256", "git_revision", "note",
)


def table_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r.base, r.dataset, r.method, _num(r.published), _num(r.lost), _num(r.pul), _num(r.gain, True), _num(r.gap, True),
            "" if r.epochs is None else r.epochs, "" if r.images is None else r.images,
            r.base_sha256, r.pul_sha256, r.git_revision, r.note,
        ])
    return out.getvalue()


def table_markdown(rows: list[Row], title_note: str = "", notes: tuple[str, ...] = ()) -> str:
    """The table with a header; ``title_note`` (e.g. :data:`PIPELINE_CHECK`) is put in bold above it."""
    lines = ["# CorLoc before and after PUL (the seed paper's Table 5)", ""]
    if title_note:
        lines += [f"**{title_note.capitalize()}.**", ""]
    lines += [
        "| base | dataset | method | published | base ours | PUL ours | PUL − base (ours) | ours − published |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.base} | {r.dataset} | {r.method} | {_num(r.published) or 'n/a'} | {_num(r.lost) or '…'} | {_num(r.pul) or '…'} "
            f"| {_num(r.gain, True) or '…'} | {_num(r.gap, True) or 'n/a'} |"
        )
    lines += ["", "CorLoc in %: one box per image, correct when IoU ≥ 0.5 with any ground-truth box (docs/protocol.md).",
              "Published: LOST (Siméoni et al. 2021; ResNet50 dilated, k = 100; ViTs on keys), TokenCut (Wang et al. 2022; "
              "τ = 0.2). The CSV keeps its column names: `lost_*` is the row's method. `…`: not run yet."]
    lines += list(notes)
    return "\n".join(lines) + "\n"
