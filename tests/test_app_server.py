"""The app as users meet it: a real server on 127.0.0.1 driven by gradio_client and by a real
browser (Debian chromium through Playwright). Nothing is downloaded: weights folders are empty, so
the page opens on the ``random`` backbone with a note saying how to get the ImageNet weights."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from discovery.app.config import AppConfig
from discovery.app.engine import Engine
from discovery.app.ui import build_demo, launch_options

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, random_backbone):
    """A launched app (in this process), its URL and its empty weights folder."""
    weights_dir = tmp_path_factory.mktemp("app-weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISCOVERY_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("app-torch-home")))
        config = AppConfig(weights_dir=weights_dir, port=free_port(), max_side=160, max_upload_mb=1, queue_size=32)
        engine = Engine(weights_dir=weights_dir, max_side=config.max_side)
        engine.add(random_backbone)
        demo = build_demo(config, engine)
        _, url, _ = demo.launch(**launch_options(config), prevent_thread_lock=True, quiet=True)
        try:
            yield url, weights_dir
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False, download_files=False)


@pytest.fixture
def image_file(tmp_path, textured_image):
    path = tmp_path / "object.png"
    Image.fromarray(textured_image).save(path)
    return path


def _run(client, image, backbone="random", **kw):
    args = dict(checkpoint="", stride=16, k=100, method="gradcam", target="", detector="", top_k=5) | kw
    return client.predict(
        handle_file(str(image)), backbone, args["checkpoint"], args["stride"], args["k"], args["method"],
        args["target"], args["detector"], args["top_k"], api_name="/run",
    )


def test_run_api_takes_an_image_alone(client, image_file):
    """Every input but the image has a default, so scripts need not repeat the UI's settings."""
    *_, record, _, status = client.predict(handle_file(str(image_file)), api_name="/run")
    assert "error" not in record and record["k"] == 100 and record["stride"] == 16
    assert len(record["lost"]["box"]) == 4 and "Done" in status and "detector" not in record


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("notes.jpg", b"a text file, not a picture\n", "not a recognised image format"),
    ("empty.png", b"", "empty file (0 bytes)"),
])
def test_bad_file_over_the_api_says_what_is_wrong(client, tmp_path, image_file, capfd, name, content, reason):
    """Gradio would fail on such a file in its own input processing, before the handler: the client
    got "The upstream Gradio app has raised an exception" and the server log a traceback."""
    bad = tmp_path / name
    bad.write_bytes(content)
    *panels, record, download, status = _run(client, bad)
    message = f"cannot read image '{name}': {reason}"
    assert record == {"error": message}
    assert status == f"⚠ **error:** {message}"
    assert panels == [None] * 5 and download is None
    *_, record, _, status = _run(client, image_file)  # the next, good file still works
    assert "error" not in record and "Done" in status
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out and "UnidentifiedImageError" not in log.err + log.out


def test_inline_image_over_the_api(client, image_file, capfd):
    """A data: URL instead of an uploaded file: decoded by the handler too, and held to the upload limit."""
    def inline(url):
        return client.predict({"url": url, "meta": {"_type": "gradio.FileData"}}, api_name="/run")

    *_, record, _, status = inline("data:image/png;base64," + base64.b64encode(image_file.read_bytes()).decode())
    assert "error" not in record and "Done" in status
    *_, record, _, _ = inline("data:image/png;base64," + base64.b64encode(b"not a picture").decode())
    assert record == {"error": "cannot read image 'file.png': not a recognised image format"}
    with pytest.raises(AppError, match="inline image: not valid base64 data"):
        inline("data:image/png;base64,AAAAA")
    with pytest.raises(AppError, match="image too large: over the 1 MB upload limit"):
        inline("data:image/png;base64," + "A" * (2 * 1024 * 1024))  # over the server's 1 MB
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out


def test_detector_over_the_api(client, image_file, tiny_detector):
    box, degree, mask, cam, found, record, download, status = _run(client, image_file, detector=str(tiny_detector), top_k=2)
    assert "error" not in record, record
    assert found is not None and 1 <= len(record["detector"]["boxes"]) == len(record["detector"]["scores"]) <= 2
    assert record["detector"]["sha256"] and "detector:" in status


def test_server_binds_loopback(server):
    assert server[0].startswith("http://127.0.0.1:")


def test_upload_gives_a_box_inside_the_image(client, image_file):
    box, degree, mask, cam, found, record, download, status = _run(client, image_file)
    assert "error" not in record, record
    x1, y1, x2, y2 = record["lost"]["box"]
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
    assert record["backbone"] == "random" and "pipeline check" in record["note"]
    for panel in (box, degree, mask, cam):
        assert panel["path"].endswith(".png")  # lossless panels, not Gradio's default WebP
    assert found is None
    assert download is not None and "Done" in status


def test_missing_weights_over_the_api(client, image_file, server):
    *_, record, download, status = _run(client, image_file, backbone="imagenet")
    assert "resnet50-0676ba61.pth" in record["error"] and str(server[1]) in record["error"]
    assert download is None and "error" in status
    text = client.predict("imagenet", "", api_name="/describe")
    assert "resnet50-0676ba61.pth" in text and "download.pytorch.org" in text


def test_twenty_simultaneous_requests_all_complete(server, tmp_path):
    rng = np.random.default_rng(7)
    paths = []
    for i in range(20):
        h, w = 64 + 16 * (i % 3), 80 + 16 * (i % 4)
        img = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
        img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 230
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append((tmp_path / f"{i}.png", w, h))

    def one(item):
        path, w, h = item
        # a client per caller, as 20 browsers would be
        record = _run(Client(server[0], verbose=False, download_files=False), path, k=50)[5]
        return record, w, h

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, paths))
    for record, w, h in results:
        assert "error" not in record, record
        x1, y1, x2, y2 = record["lost"]["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert record["image_size"] == {"width": w, "height": h}


def test_upload_over_the_size_limit_is_refused(server, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1024 * 1024
    # the server itself refuses it (a browser or a raw HTTP client gets 413)...
    with big.open("rb") as fh:
        resp = httpx.post(f"{server[0]}gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=60)
    assert resp.status_code == 413, resp.text
    # ...and gradio_client refuses before sending
    client = Client(server[0], verbose=False, download_files=False)
    with pytest.raises(Exception, match="exceed.* maximum"):
        _run(client, big)


def test_python_m_app_serves_on_loopback_only(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), "--weights-dir", str(tmp_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the server is up (or the process died)
        assert line.startswith(f"app running at http://127.0.0.1:{port}"), line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert resp.status == 200
        listening = [
            c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (run `make browser`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_browser_example_runs_end_to_end(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server[0], "data:", "blob:")) else None)
    page.goto(server[0])
    page.wait_for_selector("#run")
    # Fresh machine: ImageNet weights are missing, so the page opened on random and says why.
    note = page.inner_text("#backbone-status")
    assert "resnet50-0676ba61.pth" in note and "pipeline check" in note
    page.get_by_text("chelsea", exact=True).first.click()
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_selector("#box-image img", timeout=120_000)
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=60_000)
    status = page.inner_text("#status")
    assert "LOST box" in status and "error" not in status.lower()
    assert page.locator("#cam-image img").count() == 1
    # Every output picture is shown whole: nothing laid over it, aspect ratio kept.
    panels = page.evaluate("""() => ['box-image', 'degree-image', 'mask-image', 'cam-image'].map(id => {
        const img = document.querySelector('#' + id + ' img');
        img.scrollIntoView({block: 'center'});  // the detector controls made the page taller than the viewport
        const r = img.getBoundingClientRect();
        const inset = 3, xs = [r.left + inset, r.left + r.width / 2, r.right - inset];
        const ys = [r.top + inset, r.top + r.height / 2, r.bottom - inset];
        const covered = xs.flatMap(x => ys.map(y => document.elementFromPoint(x, y) !== img)).filter(Boolean).length;
        return {ratio: r.width / r.height, natural: img.naturalWidth / img.naturalHeight, covered, fit: getComputedStyle(img).objectFit};
    })""")
    for panel in panels:
        assert panel["covered"] == 0, panels
        assert panel["fit"] in ("contain", "scale-down") or abs(panel["ratio"] - panel["natural"]) < 0.02, panels
    body = page.inner_text("body")
    assert "Traceback" not in body and "Error" not in body
    assert outside == []  # nothing is fetched from outside the app
    page.close()


def test_browser_missing_weights_shows_the_fix(browser, server, image_file):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server[0])
    page.wait_for_selector("#run")
    page.click("#backbone input")
    page.get_by_role("option", name="imagenet (missing)", exact=True).click()
    page.wait_for_function(
        "document.querySelector('#backbone-status').innerText.includes('resnet50-0676ba61.pth')", timeout=30_000
    )
    assert "discovery weights fetch imagenet" in page.inner_text("#backbone-status")
    page.set_input_files("#input-image input[type=file]", str(image_file))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('error')", timeout=60_000)
    status = page.inner_text("#status")
    assert "resnet50-0676ba61.pth" in status
    assert "Traceback" not in page.inner_text("body")
    assert page.locator("#box-image img").count() == 0
    page.close()


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server[0])
    page.wait_for_selector("#run")
    return page


def _run_example(page, name="chelsea"):
    page.get_by_text(name, exact=True).first.click()
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)


LINES = """sel => {  // how many lines of text an element takes
    const el = document.querySelector(sel);
    return el.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight);
}"""


def test_browser_bad_upload_says_why_in_one_line(browser, server, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file, not a picture\n")
    expected = "⚠ error: cannot read image 'notes.jpg': not a recognised image format"
    page = _open(browser, server)
    page.set_input_files("#input-image input[type=file]", str(bad))
    # at once, on upload: the preview of such a file is a broken picture that says nothing
    page.wait_for_function("document.querySelector('#status').innerText.includes('cannot read image')", timeout=30_000)
    assert page.inner_text("#status").strip() == expected
    page.click("#run")
    page.wait_for_function("document.querySelector('#result-json').innerText.includes('cannot read image')",
                           timeout=60_000)
    assert page.inner_text("#status").strip() == expected
    assert page.evaluate(LINES, "#status p") < 1.5
    # no red "Error" on the panels (Gradio's own failure display), no traceback anywhere
    assert "Error" not in page.inner_text("#outputs") and page.locator("#outputs img").count() == 0
    assert "Traceback" not in page.inner_text("body")
    _run_example(page)  # a good image after the bad one runs as usual
    assert "error" not in page.inner_text("#status") and page.locator("#box-image img").count() == 1
    page.close()


def test_browser_panels_at_1400_px(browser, server, tmp_path):
    """Four aligned panels a third wider than before (then five at ~230 px, titles on two lines)."""
    page = _open(browser, server)
    _run_example(page)
    status = page.locator("#status")
    assert status.is_visible() and status.inner_text().startswith("⚠ random: pipeline check, not a model")
    page.locator("#outputs").scroll_into_view_if_needed()
    panels = page.evaluate("""() => ['box-image', 'degree-image', 'mask-image', 'cam-image'].map(id => {
        const image = document.getElementById(id), column = image.closest('.column');
        const title = column.querySelector('.prose.panel-title'), img = image.querySelector('img');
        const box = el => { const r = el.getBoundingClientRect(); return {x: r.left, y: r.top + scrollY, w: r.width, h: r.height}; };
        return {column: box(column), title: box(title.querySelector('p')), img: box(img), src: img.src,
                cut: title.scrollWidth > title.clientWidth,
                lines: title.querySelector('p').getBoundingClientRect().height / parseFloat(getComputedStyle(title).lineHeight)};
    })""")
    widths = [p["column"]["w"] for p in panels]
    assert min(widths) >= 300 and max(widths) - min(widths) < 1, panels
    for left, right in zip(panels, panels[1:]):
        assert right["column"]["x"] >= left["column"]["x"] + left["column"]["w"], panels  # one row, in order
        for part in ("column", "title", "img"):
            assert abs(right[part]["y"] - left[part]["y"]) < 1, (part, panels)  # aligned
    for panel in panels:
        assert panel["lines"] < 1.5 and not panel["cut"], panels  # each title whole, on one line
        assert panel["img"]["w"] >= panel["column"]["w"] - 1, panels  # the picture fills its panel
        assert panel["src"].endswith(".png"), panels
    assert not page.locator("#detector-image").is_visible()  # no detector: no empty fifth panel
    shot = tmp_path / "panels-1400.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.width == 1400 and im.height >= 1000
        first = panels[0]["img"]
        crop = np.asarray(im.convert("RGB").crop((first["x"], first["y"], first["x"] + first["w"], first["y"] + first["h"])))
    assert crop.std() > 20  # the picture is drawn, not a blank or broken image
    page.close()


def test_browser_detector_panel_only_with_a_detector(browser, server, tiny_detector):
    page = _open(browser, server)
    assert not page.locator("#detector-image").is_visible()
    detector = page.locator("#detector textarea, #detector input").first
    detector.fill(str(tiny_detector))
    _run_example(page, "coffee")
    page.wait_for_selector("#detector-image img", timeout=30_000)
    assert "detector:" in page.inner_text("#status")
    first, found = (page.evaluate(f"document.getElementById('{id}').closest('.column').getBoundingClientRect().toJSON()")
                    for id in ("box-image", "detector-image"))
    # the fifth panel starts a second row, in the first panel's column and at its width
    assert abs(found["x"] - first["x"]) < 1 and abs(found["width"] - first["width"]) < 1 and found["y"] > first["bottom"]
    detector.fill("")
    page.click("#run")
    page.wait_for_function("(t => t.includes('Done') && !t.includes('detector:'))(document.querySelector('#status').innerText)",
                           timeout=60_000)
    page.wait_for_function("!document.querySelector('#detector-image')?.checkVisibility()", timeout=30_000)
    page.close()
