"""The app's discovery methods (LOST, TokenCut) and its ViT backbones, called directly (no server).
The ViT is ``random-vits16``, a seeded random init built offline: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file

from discovery.app.captions import METHOD_NAMES, panel_titles
from discovery.app.choices import CHECKPOINT, describe, initial_backbone
from discovery.app.config import AppConfig
from discovery.app.engine import Engine, backbone_name, parse_tau
from discovery.app.main import build_parser, config_from_args
from discovery.app.results import ResultFiles
from discovery.app.ui import Handlers, build_demo
from discovery.backbones import load_backbone
from discovery.defaults import DEFAULT_TAU
from discovery.explain import VIT_EMBEDDING_TARGET
from discovery.localizer import Localizer
from discovery.weights import WeightsError
from test_app_server import LINES, _open, _run_example, browser, client, image_file, server  # noqa: F401 (fixtures)

VIT = "random-vits16"


@pytest.fixture(scope="module")
def vit_backbone():
    return load_backbone(VIT)


@pytest.fixture(scope="module")
def handlers(random_backbone, vit_backbone, tmp_path_factory):
    engine = Engine(weights_dir=tmp_path_factory.mktemp("weights"), max_side=160)
    engine.add(random_backbone)
    engine.add(vit_backbone)
    return Handlers(engine, ResultFiles(keep=4))


def _inside(box, width=128, height=96):
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_vit_names_as_the_command_line_takes_them():
    assert backbone_name(VIT) == VIT and backbone_name("dino-vitb8") == "dino-vitb8"
    for typed in ("random-vits8", "dino-vits16", "timm:vit_small_patch16_224", "timm:vit_tiny_patch16_224@w.safetensors",
                  "timm:bad name", "module:pkg.mod:factory", "pul:runs/pul.safetensors"):
        assert backbone_name(CHECKPOINT, typed) == typed  # a malformed one is refused, in one line, on loading
    assert backbone_name(CHECKPOINT, "runs/pul.bin") == "pul:runs/pul.bin"
    with pytest.raises(ValueError, match="unknown backbone 'vit_s16'.*random-vits16"):
        backbone_name("vit_s16")


def test_a_missing_vit_falls_back_to_its_random_layout(tmp_path):
    name, note = initial_backbone("dino-vits16", tmp_path)
    assert name == VIT and "dino_deitsmall16_pretrain.pth" in note and f"`{VIT}` is selected" in note
    assert "pipeline check" in describe("random-vitb8", weights_dir=tmp_path)
    assert "Pick `random-vits8`" in describe("dino-vits8", weights_dir=tmp_path)


@pytest.mark.parametrize("value", [None, "", "abc", 1.5, -2, float("nan"), float("inf")])
def test_tau_outside_a_cosine_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match=r"tau must be .*\[-1, 1\]") as err:
        parse_tau(value)
    assert "\n" not in str(err.value)
    assert parse_tau("0.3") == 0.3 and parse_tau(-1) == -1.0


def test_tokencut_is_an_argument_of_the_query(handlers, random_backbone, textured_image):
    """The same cached model answers LOST, then TokenCut, then LOST: nothing is remembered between queries."""
    lost = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "")
    cut = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "", "", 5, "tokencut", 0.3)
    again = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "")
    record = cut[5]
    assert record["method"] == "tokencut" and record["tau"] == 0.3 and "lost" not in record
    expected = Localizer(random_backbone, max_side=160)(textured_image, method="tokencut", tau=0.3)
    assert record["tokencut"]["box"] == [round(v, 2) for v in expected.box]
    assert record["tokencut"]["seed_cell"] == list(expected.seed) and _inside(record["tokencut"]["box"])
    assert json.loads(Path(cut[6]).read_text())["tau"] == 0.3  # the downloadable JSON carries them too
    assert "tokencut" in record["timings_ms"]
    assert "TokenCut box [" in cut[7] and "τ = 0.3" in cut[7] and "LOST" not in cut[7]
    assert not np.array_equal(cut[1], lost[1])  # the Fiedler vector, not the inverse degree
    assert np.array_equal(cut[3], lost[3])  # the CAM does not depend on the discovery method
    assert lost[5]["method"] == again[5]["method"] == "lost" and lost[5]["tau"] is None
    assert again[5]["lost"] == lost[5]["lost"] and "LOST box [" in again[7] and "k = 100" in again[7]


@pytest.mark.parametrize(("method", "tau", "expected"), [
    ("tokencut", 2.0, "tau must be a cosine similarity in [-1, 1], got 2.0"),
    ("tokencut", None, "tau must be a number"),
    ("lost", float("nan"), "tau must be a cosine similarity"),  # refused for either method, as `locate --tau`
    ("ncut", DEFAULT_TAU, "discovery method must be one of lost, tokencut"),
])
def test_bad_method_or_tau_is_an_error_line(handlers, textured_image, method, tau, expected):
    with pytest.warns(UserWarning):  # gr.Warning outside a request
        out = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "", "", 5, method, tau)
    assert out[:5] == (None,) * 5 and out[6] is None
    assert expected in out[5]["error"] and "\n" not in out[5]["error"] and out[7].startswith("⚠ **error:**")


@pytest.mark.parametrize("choice", [(VIT, ""), (CHECKPOINT, VIT)])
def test_random_vit_locates_with_both_methods_and_explains(handlers, vit_backbone, textured_image, choice):
    localizer = Localizer(vit_backbone, max_side=160)
    for method in ("lost", "tokencut"):
        box, seed_map, mask, cam, _, record, _, status = handlers.run(
            textured_image, *choice, 16, 100, "gradcam", "", "", 5, method, DEFAULT_TAU)
        assert "error" not in record, record
        assert record["backbone"] == VIT and record["stride"] == 16 and record["method"] == method
        assert "pipeline check" in record["note"] and status.startswith(f"⚠ **{VIT}: pipeline check")
        assert record[method]["box"] == [round(v, 2) for v in localizer(textured_image, method=method).box]
        assert _inside(record[method]["box"]) and _inside(record["cam"]["box"])
        assert record["cam"]["method"] == "gradcam" and record["cam"]["target_name"] == VIT_EMBEDDING_TARGET
        for panel in (box, seed_map, mask, cam):
            assert panel.shape == textured_image.shape and panel.dtype == np.uint8
        assert f"{METHOD_NAMES[method]} box [" in status
    assert handlers.engine.cached()[-1] == (VIT, 16)  # served from the cache, not loaded again


def test_a_vit_that_needs_missing_weights_is_an_error_line(handlers, textured_image):
    for choice in (("dino-vits16", ""), (CHECKPOINT, "timm:vit_tiny_patch16_224")):
        with pytest.warns(UserWarning):
            out = handlers.run(textured_image, *choice, 16, 100, "gradcam", "", "", 5, "tokencut", DEFAULT_TAU)
        error = out[5]["error"]
        assert ("dino_deitsmall16_pretrain.pth" in error or "--download" in error) and "\n" not in error
        assert out[0] is None


def test_a_timm_name_without_a_file_is_not_fetched_unless_the_app_may_download(tmp_path, monkeypatch):
    monkeypatch.delenv("DISCOVERY_OFFLINE", raising=False)  # the app's own rule, not the offline switch
    with pytest.raises(WeightsError, match="start the app with --download"):
        Engine(weights_dir=tmp_path).explainer("timm:vit_tiny_patch16_224", 16)


def test_panels_are_titled_by_the_method_of_their_result():
    box, seed_map = (u["value"] for u in Handlers.retitle({"method": "tokencut"}))
    assert box == "**TokenCut box (red) and seed (green)**" and "Fiedler eigenvector" in seed_map
    assert [u["value"] for u in Handlers.retitle({"method": "lost"})] == [f"**{t}**" for t in panel_titles("lost")]
    assert all("value" not in u for u in Handlers.retitle({"error": "no image"}))  # left as they were
    assert all("value" not in u for u in Handlers.retitle(None))


def test_the_page_opens_on_the_configured_method(handlers):
    demo = build_demo(AppConfig(method="tokencut", tau=0.25, backbone=VIT), handlers.engine)
    blocks = {b.elem_id: b for b in demo.blocks.values() if b.elem_id}
    assert blocks["discovery-method"].value == "tokencut" and blocks["tau"].value == 0.25
    assert blocks["box-image-title"].value == "**TokenCut box (red) and seed (green)**"
    assert blocks["backbone"].value == VIT  # a random ViT is a dropdown entry, not a checkpoint path
    run = next(dep for dep in demo.fns.values() if dep.api_name == "run")
    assert [b.elem_id for b in run.inputs[-2:]] == ["discovery-method", "tau"]  # last: older API calls still fit


def test_cli_takes_method_tau_and_vit_names():
    config = config_from_args(build_parser().parse_args(["--method", "tokencut", "--tau", "0.5", "--backbone", VIT]))
    assert (config.method, config.tau, config.backbone) == ("tokencut", 0.5, VIT)
    assert config_from_args(build_parser().parse_args([])).method == "lost"
    for bad in (["--tau", "2"], ["--method", "ncut"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(bad)
        assert exc.value.code == 2
    with pytest.raises(ValueError, match="invalid tau"):
        AppConfig(tau=1.5)
    with pytest.raises(ValueError, match="invalid method"):
        AppConfig(method="ncut")


def test_engine_tokencut_with_eigencam_on_a_vit(vit_backbone, textured_image):
    engine = Engine(max_side=160)
    engine.add(vit_backbone)
    analysis = engine.analyze(textured_image, VIT, 16, method="eigencam", discovery_method="tokencut", tau=0.1)
    record = analysis.record
    assert record["method"] == "tokencut" and record["tau"] == 0.1 and record["cam"]["method"] == "eigencam"
    expected = Localizer(vit_backbone, max_side=160)(textured_image, method="tokencut", tau=0.1)
    assert record["tokencut"]["box"] == [round(v, 2) for v in expected.box]


# --- over a real server: the API and a browser ------------------------------------------------


def test_tokencut_over_the_api(client, image_file):
    def run(method, tau):
        return client.predict(handle_file(str(image_file)), "random", "", 16, 100, "gradcam", "", "", 5, method, tau,
                              api_name="/run")

    *_, record, download, status = run("tokencut", 0.3)
    assert record["method"] == "tokencut" and record["tau"] == 0.3 and _inside(record["tokencut"]["box"])
    assert download is not None and "TokenCut box" in status
    *panels, record, download, status = run("tokencut", 5)
    assert record == {"error": "tau must be a cosine similarity in [-1, 1], got 5"}
    assert panels == [None] * 5 and download is None and status.startswith("⚠ **error:**")
    # by keyword, as docs/app.md scripts it: every other input keeps its default
    *_, record, _, _ = client.predict(handle_file(str(image_file)), backbone="random", discovery_method="tokencut", tau=0.3,
                                      api_name="/run")
    assert record["method"] == "tokencut" and record["tau"] == 0.3


def test_browser_tokencut_retitles_the_panels(browser, server):
    page = _open(browser, server)
    titles = "() => ['box-image-title', 'degree-image-title'].map(id => document.querySelector('#' + id + ' p').innerText)"

    def titled(method):
        page.wait_for_function(f"({titles})().join('|') === {'|'.join(panel_titles(method))!r}", timeout=30_000)

    titled("lost")
    page.locator("#discovery-method").get_by_text("TokenCut", exact=True).click()
    _run_example(page)
    titled("tokencut")
    status = page.inner_text("#status")
    assert "TokenCut box" in status and "τ = 0.2" in status and "tokencut" in page.inner_text("#result-json")
    for title in ("#box-image-title p", "#degree-image-title p"):
        assert page.evaluate(LINES, title) < 1.5  # still one line at 1400 px
    page.locator("#discovery-method").get_by_text("LOST", exact=True).click()
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('LOST box')", timeout=60_000)
    titled("lost")
    page.close()
