"""The app's own Gradio pieces: an image input that leaves decoding to :mod:`discovery.images`,
and the output panels (titled pictures in a grid of aligned columns, served as PNG).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr
from gradio import processing_utils
from gradio.context import LocalContext
from gradio.data_classes import ImageData

PANEL_MIN_WIDTH = 300
"""Narrowest panel (CSS pixels): four panels fit side by side at a 1400 px wide window."""

PANELS_CSS = f"""
#outputs {{display: grid; grid-template-columns: repeat(auto-fit, minmax({PANEL_MIN_WIDTH}px, 1fr));
           gap: var(--layout-gap)}}
#outputs .panel-title {{white-space: nowrap; overflow: hidden; text-overflow: ellipsis}}
#outputs .image-container button, #outputs .image-frame {{width: 100%}}
#outputs .image-frame img {{width: 100%; height: auto; object-fit: contain}}
"""
"""A grid rather than Gradio's flex row: a panel that wraps keeps its column's width, and a hidden
one leaves no gap."""


def image_input(**options: Any) -> gr.Image:
    """A ``gr.Image`` that hands the handler the uploaded file's path without opening it.

    Gradio's own input processing decodes the file with PIL, so a bad upload would fail there,
    before the handler, with no message (a red "Error" on each output, a traceback in the server
    log); the handler decodes it with :mod:`discovery.images` instead, whose errors are one line.
    It is the stock widget with its ``preprocess`` replaced on the instance: a ``gr.Image``
    subclass would make Gradio write a ``.pyi`` stub next to this module at import.
    """
    image = gr.Image(type="filepath", **options)
    image.preprocess = partial(_undecoded, image)
    return image


def _undecoded(image: gr.Image, payload: ImageData | None) -> str | None:
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):  # an API client may send the bytes inline
        _check_inline_size(payload.url)
        try:
            return processing_utils.save_base64_to_cache(payload.url, image.GRADIO_CACHE, payload.orig_name)
        except ValueError:  # binascii.Error
            raise gr.Error("inline image: not valid base64 data", print_exception=False) from None
    return payload.path


def _check_inline_size(data_url: str) -> None:
    """Hold inline (base64) images to the upload limit that the upload route enforces on files."""
    limit = getattr(LocalContext.blocks.get(None), "max_file_size", None)
    if limit is not None and len(data_url) * 3 // 4 > limit:
        message = f"image too large: over the {limit / 1024 / 1024:g} MB upload limit"
        raise gr.Error(message, print_exception=False)


def panel_title(title: str) -> str:
    """A panel title's Markdown (for :func:`panel`, and for a handler that retitles one)."""
    return f"**{title}**"


def panel(title: str, elem_id: str, visible: bool = True) -> tuple[gr.Column, gr.Markdown, gr.Image]:
    """An output picture under a one-line title (above it, not laid over it), with no buttons over
    its corners (the result JSON is downloadable below); returns its column, title and image."""
    with gr.Column(min_width=PANEL_MIN_WIDTH, visible=visible) as column:
        heading = gr.Markdown(panel_title(title), elem_classes=["panel-title"], elem_id=f"{elem_id}-title")
        image = gr.Image(
            show_label=False, interactive=False, buttons=[], container=False, format="png", elem_id=elem_id,
        )
    return column, heading, image
