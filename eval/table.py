"""The seed paper's Table 5 as ``reproduce`` writes it: our LOST CorLoc of each base before and
after PUL, LOST's published base numbers beside them, and the differences (``table.md``, ``table.csv``)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

#: LOST's published CorLoc (%) of the dilated ResNet50 at k = 100 (docs/protocol.md):
#: (base, dataset) -> CorLoc. The numbers PUL has to beat.
PUBLISHED_LOST = {
    ("dino", "voc07"): 36.8, ("dino", "voc12"): 42.7, ("dino", "coco20k"): 26.5,
    ("imagenet", "voc07"): 33.5, ("imagenet", "voc12"): 39.1, ("imagenet", "coco20k"): 25.5,
}
PIPELINE_CHECK = "pipeline check, not a result"


@dataclass(frozen=True)
class Row:
    """One cell of the grid. CorLoc values in percent; ``None`` where that step has not run yet.
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

    @property
    def published(self) -> float | None:
        return PUBLISHED_LOST.get((self.base, self.dataset))

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
    "base", "dataset", "lost_published", "lost_ours", "pul_ours", "pul_minus_lost", "lost_minus_published",
    "pul_epochs", "pul_images", "base_sha256", "pul_sha256", "git_revision", "note",
)


def table_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r.base, r.dataset, _num(r.published), _num(r.lost), _num(r.pul), _num(r.gain, True), _num(r.gap, True),
            "" if r.epochs is None else r.epochs, "" if r.images is None else r.images,
            r.base_sha256, r.pul_sha256, r.git_revision, r.note,
        ])
    return out.getvalue()


def table_markdown(rows: list[Row], title_note: str = "", notes: tuple[str, ...] = ()) -> str:
    """The table with a header; ``title_note`` (e.g. :data:`PIPELINE_CHECK`) is put in bold above it."""
    lines = ["# LOST CorLoc before and after PUL (the seed paper's Table 5)", ""]
    if title_note:
        lines += [f"**{title_note.capitalize()}.**", ""]
    lines += [
        "| base | dataset | LOST published | LOST ours | PUL ours | PUL − LOST (ours) | ours − published |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.base} | {r.dataset} | {_num(r.published) or 'n/a'} | {_num(r.lost) or '…'} | {_num(r.pul) or '…'} "
            f"| {_num(r.gain, True) or '…'} | {_num(r.gap, True) or 'n/a'} |"
        )
    lines += ["", "CorLoc in %: one box per image, correct when IoU ≥ 0.5 with any ground-truth box (docs/protocol.md).",
              "LOST published: Siméoni et al. 2021, ResNet50 dilated, k = 100. `…`: not run yet."]
    lines += list(notes)
    return "\n".join(lines) + "\n"
