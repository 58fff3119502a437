"""The words the page shows for a result: the discovery method's name, the titles of the panels it
drew, and the one-line status (no Gradio code)."""

from __future__ import annotations

import html
from typing import Any

from discovery.defaults import DISCOVERY_METHODS

METHOD_NAMES = dict(zip(DISCOVERY_METHODS, ("LOST", "TokenCut")))

SEED_MAPS = {
    "lost": "Inverse degree (hot: seed candidates)",
    "tokencut": "Fiedler eigenvector (hot: seed's side)",
}
"""What the second panel shows: LOST picks its seed from the lowest degrees, TokenCut cuts the
token graph where its second eigenvector changes sign and keeps the seed's side."""


def method_choices() -> list[tuple[str, str]]:
    """``(label, value)`` of each discovery method, for a radio."""
    return [(METHOD_NAMES[m], m) for m in DISCOVERY_METHODS]


def panel_titles(method: str) -> tuple[str, str]:
    """Titles of the box panel and of the seed-map panel for ``method``'s result."""
    return f"{METHOD_NAMES[method]} box (red) and seed (green)", SEED_MAPS[method]


def error_line(message: str) -> str:
    return f"⚠ **error:** {html.escape(message, quote=False)}"


def summary(record: dict[str, Any]) -> str:
    """One Markdown status line of an analysis (:attr:`app.engine.Analysis.record`)."""
    method, cam = record["method"], record["cam"]
    box = ", ".join(f"{v:.0f}" for v in record[method]["box"])
    settings = f"τ = {record['tau']:g}" if method == "tokencut" else f"k = {record['k']}"
    target = html.escape(str(cam["target_name"]))
    if cam["probability"] is not None:
        target_text = f"**{target}** (class {cam['target']}, p = {cam['probability']:.3f})"
    elif cam["target"] is not None:
        target_text = f"**{target}** (class {cam['target']})"
    else:
        target_text = f"**{target}**"
    note = f"⚠ **{record['backbone']}: {record['note']}** · " if "note" in record else ""
    found = ""
    if "detector" in record:
        scores = record["detector"]["scores"]
        found = f" · detector: {len(scores)} box{'es' if len(scores) != 1 else ''}"
        found += f" (best score {scores[0]:.2f})" if scores else ""
    return (
        f"{note}**Done.** {METHOD_NAMES[method]} box [{box}] (original pixels, {settings}) · "
        f"{cam['method']} target: {target_text}{found} · {record['timings_ms']['total']:.0f} ms"
    )
