"""The Gradio 6 Blocks UI over :class:`app.engine.Engine`.

:func:`build_demo` returns a queued ``gr.Blocks``; :func:`launch_options` gives the matching
``launch()`` keywords (theme, CSS, upload limit, host, port). The event handlers live on
:class:`Handlers` so they can be called directly, without a server.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from discovery.defaults import DEFAULT_TAU
from discovery.examples import EXAMPLES, example_path
from discovery.images import ImageError, decode
from discovery.weights import REGISTRY, WeightsError

from .captions import error_line, method_choices, panel_titles, summary
from .choices import CHECKPOINT, backbone_choices, describe, initial_backbone
from .compare import compare_pair
from .compare import summary as compare_summary
from .components import PANELS_CSS, image_input, panel, panel_title
from .config import AppConfig
from .engine import (
    CAM_METHODS,
    DEFAULT_TOP_K,
    MAX_TOP_K,
    STRIDES,
    Engine,
    backbone_name,
    parse_target,
    parse_tau,
)
from .results import ResultFiles

log = logging.getLogger(__name__)

USER_ERRORS = (WeightsError, ValueError)

TITLE = "Object discovery: LOST or TokenCut, and Grad-CAM, on a ResNet50 or a ViT"

CSS = "#status {min-height: 2.5em}\n" + PANELS_CSS

IMAGE_CHECK_SIDE = 64
"""Side :meth:`Handlers.check_image` decodes at: enough to know the file is an image, cheap for a large JPEG."""

Panel = np.ndarray | None
RunOutputs = tuple[Panel, Panel, Panel, Panel, Panel, dict[str, Any], str | None, str]
CompareOutputs = tuple[Panel, Panel, Panel, Panel, Panel, Panel, dict[str, Any], str]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _unreadable(image: Any, err: ImageError) -> str:
    """``cannot read image 'NAME': REASON`` (the name when the image came as a file)."""
    name = f" '{Path(image).name}'" if isinstance(image, (str, Path)) else ""
    return f"cannot read image{name}: {_one_line(err)}"


class Handlers:
    """The UI's event handlers, over one :class:`Engine` and one :class:`ResultFiles`.

    Which weights count as present follows the engine's ``weights_dir`` and ``download``;
    ``preferred`` is the backbone to select when the page opens (its random stand-in if its
    weights are missing; a name the dropdown lacks selects the checkpoint entry with the name
    filled in).
    """

    def __init__(self, engine: Engine, files: ResultFiles, preferred: str = "imagenet"):
        self.engine = engine
        self.files = files
        self.preferred = preferred
        if preferred in {value for _, value in self.dropdown_choices()}:
            self.initial, _ = initial_backbone(preferred, engine.weights_dir, engine.download)
            self.initial_checkpoint = ""
        else:
            self.initial, self.initial_checkpoint = CHECKPOINT, preferred

    def run(
        self,
        image: Any,
        backbone: str,
        checkpoint: str = "",
        stride: int = 16,
        k: float = 100,
        method: str = "gradcam",
        target: str = "",
        detector: str = "",
        top_k: float = DEFAULT_TOP_K,
        discovery_method: str = "lost",
        tau: float | str | None = DEFAULT_TAU,
    ) -> RunOutputs:
        """Analyse ``image``; returns (box, seed map, mask, CAM, detector panels, JSON, JSON file
        path, status). ``detector``: a ``discovery cad train`` checkpoint path (blank: none; the
        detector panel stays empty), ``top_k``: how many of its boxes to draw;
        ``discovery_method``: ``lost`` or ``tokencut``, ``tau``: TokenCut's threshold.

        Never raises: a user error (bad image, missing weights, bad option) comes back as a
        status line, a ``gr.Warning`` toast and ``{"error": ...}`` in the JSON, with no panels.
        """
        try:
            if image is None:
                raise ValueError("no image: upload, paste or capture one, or click an example")
            analysis = self.engine.analyze(
                image,
                backbone=backbone_name(backbone, checkpoint),
                stride=int(stride),
                k=int(k),
                method=method,
                target=parse_target(target),
                detector=detector or None,
                top_k=int(top_k),
                discovery_method=discovery_method,
                tau=parse_tau(tau),
            )
        except ImageError as err:
            return self._failure(_unreadable(image, err))
        except USER_ERRORS as err:
            return self._failure(_one_line(err))
        except Exception as err:  # a bug: keep the traceback in the server log, not on the page
            log.exception("analysis failed")
            return self._failure(f"internal error ({type(err).__name__}: {_one_line(err)}); see the server log")
        record = analysis.record
        path = self.files.write(record)
        return (
            analysis.box_image,
            analysis.degree_image,
            analysis.mask_image,
            analysis.cam_image,
            analysis.detector_image,
            record,
            str(path),
            summary(record),
        )

    def compare(
        self, image: Any, backbone: str, checkpoint: str, other: str, other_checkpoint: str, stride: int = 16,
        k: float = 100,
    ) -> CompareOutputs:
        """Backbone A (the main selection) and B on ``image``: A's three panels (LOST box, inverse
        degree, Grad-CAM), B's three, the comparison's JSON and a status line. Never raises (as :meth:`run`)."""
        try:
            if image is None:
                raise ValueError("no image: upload, paste or capture one, or click an example")
            pair = compare_pair(self.engine, image, backbone_name(backbone, checkpoint),
                                backbone_name(other, other_checkpoint), int(stride), int(k))
        except ImageError as err:
            message = _unreadable(image, err)
        except USER_ERRORS as err:
            message = _one_line(err)
        except Exception as err:  # a bug: keep the traceback in the server log, not on the page
            log.exception("comparison failed")
            message = f"internal error ({type(err).__name__}: {_one_line(err)}); see the server log"
        else:
            return (*pair.rows[0], *pair.rows[1], pair.record, compare_summary(pair.record))
        gr.Warning(html.escape(message, quote=False))
        return None, None, None, None, None, None, {"error": message}, error_line(message)

    def _failure(self, message: str) -> RunOutputs:
        gr.Warning(html.escape(message, quote=False))
        return None, None, None, None, None, {"error": message}, None, error_line(message)

    def check_image(self, image: str | None) -> str:
        """Status line as soon as the input image changes (upload, example, clear): the one-line
        reason when the file is not an image (the page's preview of it is a broken picture)."""
        if image is None:
            return ""
        try:
            _, (height, width) = decode(image, max_side=IMAGE_CHECK_SIDE)
        except ImageError as err:
            return error_line(_unreadable(image, err))
        return f"Image '{html.escape(Path(image).name, quote=False)}', {width} × {height}: press **Run**."

    @staticmethod
    def detector_shown(record: dict[str, Any] | None) -> Any:
        """The detector panel is shown only for a result with a detector's boxes."""
        return gr.update(visible=bool(record) and "detector" in record)

    @staticmethod
    def retitle(record: dict[str, Any] | None) -> tuple[Any, Any]:
        """The box and seed-map panels are titled by the method of the result they show (an error
        leaves them as they were)."""
        if not record or "method" not in record:
            return gr.update(), gr.update()
        box, seed_map = panel_titles(record["method"])
        return gr.update(value=panel_title(box)), gr.update(value=panel_title(seed_map))

    def describe(self, backbone: str, checkpoint: str = "") -> str:
        """Status line for a backbone selection: what it is, or the one-line fix for missing weights."""
        return describe(backbone, checkpoint, self.engine.weights_dir, self.engine.download)

    def choose_checkpoint(self, checkpoint: str, backbone: str) -> tuple[Any, str]:
        """Typing a checkpoint path selects the checkpoint entry."""
        value = CHECKPOINT if checkpoint.strip() else backbone
        return gr.update(value=value), self.describe(value, checkpoint)

    def refresh(self, backbone: str, checkpoint: str = "") -> tuple[Any, str]:
        """On page load: re-check which weights are present (files may have arrived since start)."""
        return gr.update(choices=self.dropdown_choices()), self.opening_status(backbone, checkpoint)

    def opening_status(self, backbone: str, checkpoint: str = "") -> str:
        """Status for the initial selection: the fallback note while the preferred weights are missing."""
        note = None
        if self.preferred in REGISTRY:
            _, note = initial_backbone(self.preferred, self.engine.weights_dir, self.engine.download)
        if note and backbone == self.initial:
            return f"⚠ {note}"
        return self.describe(backbone, checkpoint)

    def dropdown_choices(self) -> list[tuple[str, str]]:
        return [(c.label, c.value) for c in backbone_choices(self.engine.weights_dir, self.engine.download)]


def build_demo(config: AppConfig = AppConfig(), engine: Engine | None = None) -> gr.Blocks:
    """The app as a queued ``gr.Blocks`` (not launched; see :func:`launch_options`).

    ``engine`` defaults to a new :class:`Engine` from ``config`` (a given one brings its own
    device, weights folder and limits); its model cache lives as long as the returned Blocks.
    """
    if engine is None:
        engine = Engine(config.device, config.weights_dir, config.download, config.max_side, config.cache_size)
    handlers = Handlers(engine, ResultFiles(), config.backbone)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600), fill_width=True) as demo:
        gr.Markdown(
            f"## {TITLE}\n"
            "Upload, paste or capture an image (or click an example), pick a backbone and press **Run**. "
            "LOST or TokenCut finds the object from the backbone's features with no labels; Grad-CAM "
            "shows what the classifier looked at. Both come from one forward pass."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = image_input(
                    label="Image", sources=["upload", "clipboard", "webcam"], height=300,
                    elem_id="input-image",
                )
                gr.Examples(
                    examples=[[str(example_path(name))] for name in EXAMPLES],
                    inputs=[image],
                    example_labels=list(EXAMPLES),
                    label="Examples (bundled with scikit-image)",
                )
            with gr.Column(scale=1):
                backbone = gr.Dropdown(
                    choices=handlers.dropdown_choices(), value=handlers.initial, label="Backbone", elem_id="backbone",
                )
                checkpoint = gr.Textbox(
                    handlers.initial_checkpoint, label="Checkpoint (for backbone 'checkpoint')",
                    placeholder="pul:weights/pul.safetensors", elem_id="checkpoint",
                )
                backbone_status = gr.Markdown(
                    handlers.opening_status(handlers.initial, handlers.initial_checkpoint), elem_id="backbone-status"
                )
                with gr.Row():
                    stride = gr.Radio(list(STRIDES), value=config.stride, label="Stride",
                                      info="a CNN's output stride (a ViT's is its patch size)")
                    k = gr.Slider(1, 400, value=100, step=1, label="k", info="LOST expansion candidates")
                with gr.Row():
                    discovery = gr.Radio(method_choices(), value=config.method, label="Discovery method",
                                         elem_id="discovery-method")
                    tau = gr.Number(config.tau, label="TokenCut τ", step=0.05, elem_id="tau",
                                    info="cosine similarity above which two cells are joined, -1..1")
                with gr.Row():
                    method = gr.Radio(list(CAM_METHODS), value="gradcam", label="CAM method")
                    target = gr.Textbox(
                        "", label="CAM target", placeholder="top-1", info="blank: top-1; or a class index / name",
                    )
                with gr.Row():
                    detector = gr.Textbox(
                        "", label="Detector (checkpoint)", placeholder="weights/cad.safetensors",
                        info="optional: a `discovery cad train` file; its boxes and scores get their own panel",
                        elem_id="detector",
                    )
                    top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Detector top-k",
                                      info="boxes drawn")
                run = gr.Button("Run", variant="primary", elem_id="run")
        status = gr.Markdown("", elem_id="status")
        with gr.Row(elem_id="outputs"):
            box_text, map_text = panel_titles(config.method)
            _, box_title, box_image = panel(box_text, "box-image")
            _, map_title, degree_image = panel(map_text, "degree-image")
            _, _, mask_image = panel("Seed's component", "mask-image")
            _, _, cam_image = panel("CAM with its box (white)", "cam-image")
            detector_panel, _, detector_image = panel("Detector boxes and scores", "detector-image", visible=False)
        with gr.Row():
            result_json = gr.JSON(label="Result", elem_id="result-json", max_height=360)
            result_file = gr.File(label="Download JSON", interactive=False)

        with gr.Accordion("Compare with another backbone", open=False, elem_id="compare"):
            gr.Markdown("A is the backbone selected above, B the one chosen here (e.g. a PUL checkpoint of A); "
                        "same image, stride and k, LOST's boxes. KL and top-1 need a classifier in both.")
            with gr.Row():
                other = gr.Dropdown(choices=handlers.dropdown_choices(), value=handlers.initial, label="Backbone B",
                                    elem_id="backbone-b")
                other_checkpoint = gr.Textbox("", label="Checkpoint B (for backbone 'checkpoint')",
                                              placeholder="pul:weights/pul.safetensors", elem_id="checkpoint-b")
                compare = gr.Button("Compare", elem_id="compare-run")
            compare_status = gr.Markdown("", elem_id="compare-status")
            pair_panels = []
            for row in ("a", "b"):
                with gr.Row(elem_id=f"compare-{row}"):
                    name = row.upper()
                    pair_panels += [panel(f"{name}: LOST box and seed", f"compare-{row}-box")[2],
                                    panel(f"{name}: inverse degree", f"compare-{row}-degree")[2],
                                    panel(f"{name}: Grad-CAM with its box", f"compare-{row}-cam")[2]]
            compare_json = gr.JSON(label="Comparison", elem_id="compare-json", max_height=360)
        compare.click(
            handlers.compare, inputs=[image, backbone, checkpoint, other, other_checkpoint, stride, k],
            outputs=[*pair_panels, compare_json, compare_status], api_name="compare",
        )

        ran = run.click(
            handlers.run,
            inputs=[image, backbone, checkpoint, stride, k, method, target, detector, top_k, discovery, tau],
            outputs=[box_image, degree_image, mask_image, cam_image, detector_image, result_json, result_file, status],
            api_name="run",
        )
        ran.then(handlers.detector_shown, result_json, detector_panel, queue=False, api_visibility="private")
        ran.then(handlers.retitle, result_json, [box_title, map_title], queue=False, show_progress="hidden",
                 api_visibility="private")
        image.change(handlers.check_image, image, status, queue=False, api_visibility="private")
        backbone.change(handlers.describe, [backbone, checkpoint], backbone_status, api_name="describe", queue=False)
        checkpoint.submit(
            handlers.choose_checkpoint, [checkpoint, backbone], [backbone, backbone_status], api_visibility="private"
        )
        demo.load(handlers.refresh, [backbone, checkpoint], [backbone, backbone_status], api_visibility="private")

    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return demo


def launch_options(config: AppConfig) -> dict[str, Any]:
    """Keywords for ``demo.launch()``: host, port, share, upload limit, theme and CSS (Gradio 6)."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "share": config.share,
        "max_file_size": int(config.max_upload_mb * 1024 * 1024),
        "enable_monitoring": False,
        "theme": gr.themes.Soft(),
        "css": CSS,
        "show_error": False,
        "footer_links": ["api", "settings"],
    }
