"""The app's engine, choices and handlers, called directly (no server). Nothing is downloaded."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio.data_classes import ImageData
from PIL import Image
from torchvision.models import resnet50

from discovery import weights as W
from discovery.app.choices import CHECKPOINT, backbone_choices, describe, initial_backbone, weights_problem
from discovery.app import components
from discovery.app.components import image_input
from discovery.app.config import AppConfig
from discovery.app.engine import Engine, backbone_name, parse_target
from discovery.app.main import main
from discovery.names import RANDOM_VITS
from discovery.app.results import ResultFiles
from discovery.app.ui import Handlers, build_demo, launch_options
from discovery.explain import EMBEDDING_TARGET, Explainer
from discovery.localizer import Localizer


@pytest.fixture(scope="module")
def engine(random_backbone):
    eng = Engine(max_side=160, cache_size=3)
    eng.add(random_backbone)
    return eng


@pytest.fixture
def weights_dir(tmp_path):
    return tmp_path / "weights"


@pytest.fixture
def handlers(random_backbone, weights_dir):
    eng = Engine(weights_dir=weights_dir, max_side=160)
    eng.add(random_backbone)
    return Handlers(eng, ResultFiles(keep=4))


def _inside(box, width, height):
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


# --- choices --------------------------------------------------------------------------------


def test_missing_weights_are_marked_with_their_fix(weights_dir):
    choices = {c.value: c for c in backbone_choices(weights_dir)}
    assert list(choices) == [*W.REGISTRY, *RANDOM_VITS, CHECKPOINT]
    for name in ("imagenet", "imagenet-v2", "dino"):
        assert choices[name].label == f"{name} (missing)"
        assert W.REGISTRY[name].filename in choices[name].problem
        assert W.REGISTRY[name].url in choices[name].problem
    assert choices["random"].problem is None
    assert "pipeline check, not a model" in choices["random"].label


def test_present_file_is_not_marked_missing(weights_dir):
    weights_dir.mkdir()
    (weights_dir / W.REGISTRY["dino"].filename).write_bytes(b"x")
    labels = {c.value: c.label for c in backbone_choices(weights_dir)}
    assert labels["dino"] == "dino"
    assert labels["imagenet"] == "imagenet (missing)"
    assert weights_problem("dino", weights_dir) is None


def test_download_mode_marks_files_to_fetch(weights_dir, monkeypatch):
    monkeypatch.delenv("DISCOVERY_OFFLINE")
    labels = {c.value: c.label for c in backbone_choices(weights_dir, download=True)}
    assert labels["imagenet"] == "imagenet (downloaded on first run)"
    assert "downloaded from https://download.pytorch.org" in describe("imagenet", "", weights_dir, download=True)
    assert initial_backbone("imagenet", weights_dir, download=True) == ("imagenet", None)
    monkeypatch.setenv("DISCOVERY_OFFLINE", "1")  # downloads switched off wins over --download
    assert backbone_choices(weights_dir, download=True)[0].label == "imagenet (missing)"


def test_initial_selection_falls_back_to_random_with_a_note(weights_dir):
    name, note = initial_backbone("imagenet", weights_dir)
    assert name == "random"
    assert "resnet50-0676ba61.pth" in note and "pipeline check" in note
    assert initial_backbone("random", weights_dir) == ("random", None)


def test_describe_missing_gives_the_one_line_fix(weights_dir):
    text = describe("imagenet", weights_dir=weights_dir)
    assert "\n" not in text
    assert "resnet50-0676ba61.pth" in text and "discovery weights fetch imagenet" in text
    assert "random" in text
    assert "pipeline check" in describe("random", weights_dir=weights_dir)
    assert "path" in describe(CHECKPOINT, "", weights_dir=weights_dir)


def test_backbone_name_and_target_parsing():
    assert backbone_name("random") == "random"
    assert backbone_name(CHECKPOINT, " runs/pul.safetensors ") == "runs/pul.safetensors"
    assert backbone_name(CHECKPOINT, "pul:x.bin") == "pul:x.bin"
    assert backbone_name(CHECKPOINT, "x.bin") == "pul:x.bin"
    with pytest.raises(ValueError, match="needs a path"):
        backbone_name(CHECKPOINT, "  ")
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        backbone_name("resnet18")
    assert parse_target("") is None and parse_target(None) is None
    assert parse_target(" 281 ") == 281
    assert parse_target("tabby") == "tabby"


# --- engine and handlers --------------------------------------------------------------------


def test_run_gives_panels_json_and_file(handlers, textured_image, random_backbone):
    box, degree, mask, cam, found, record, path, status = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "")
    assert found is None and "detector" not in record  # no detector chosen: no fifth panel
    for panel in (box, degree, mask, cam):
        assert panel.shape == textured_image.shape and panel.dtype == np.uint8
    assert not np.array_equal(box, textured_image)  # something was drawn
    assert _inside(record["lost"]["box"], 128, 96)
    assert _inside(record["cam"]["box"], 128, 96)
    assert record["image_size"] == {"width": 128, "height": 96}
    assert json.loads(Path(path).read_text()) == record
    assert set(record["timings_ms"]) >= {"prepare", "forward", "cam", "lost", "render", "total"}
    # The same answer as the library's own Localizer and Explainer.
    localizer = Localizer(random_backbone, max_side=160)
    expected = localizer(textured_image)
    assert record["lost"]["box"] == [round(v, 2) for v in expected.box]
    assert record["lost"]["seed_cell"] == list(expected.seed)
    cam_expected = Explainer(localizer)(textured_image)
    assert record["cam"]["target"] == cam_expected.target
    assert record["cam"]["probability"] == pytest.approx(cam_expected.probability, abs=1e-5)
    assert record["cam"]["box"] == [round(v, 2) for v in cam_expected.box]
    # Honesty: the random backbone is called what it is, first thing in the status line.
    assert "pipeline check" in record["note"] and status.startswith("⚠ **random: pipeline check, not a model")
    assert f"p = {record['cam']['probability']:.3f}" in status


def test_one_forward_pass_serves_lost_and_cam(engine, textured_image):
    explainer, _ = engine.explainer("random", 16)
    calls = []
    handle = explainer.localizer.trunk.register_forward_hook(lambda *a: calls.append(1))  # the trunk that runs
    try:
        analysis = engine.analyze(textured_image, "random", 16, 100, "gradcam")
    finally:
        handle.remove()
    assert len(calls) == 1
    assert analysis.record["backbone_loaded_now"] is False


def test_k_and_eigencam_are_honoured(engine, textured_image):
    a = engine.analyze(textured_image, "random", 16, k=1, method="eigencam")
    assert a.record["k"] == 1 and a.record["cam"]["method"] == "eigencam"
    assert a.record["cam"]["target"] is None and a.record["cam"]["probability"] is None
    expected = Localizer(engine.explainer("random", 16)[0].backbone)(textured_image, k=1)
    assert a.record["lost"]["box"] == [round(v, 2) for v in expected.box]
    default = engine.analyze(textured_image, "random", 16, method="eigencam")
    assert default.record["k"] == 100


def test_class_target_by_name_and_index(engine, textured_image):
    by_index = engine.analyze(textured_image, "random", 16, method="gradcam", target=281)
    assert by_index.record["cam"]["target"] == 281
    assert by_index.record["cam"]["target_name"] == "tabby"
    by_name = engine.analyze(textured_image, "random", 16, method="gradcam", target="tabby")
    assert by_name.record["cam"] == by_index.record["cam"]


def test_large_image_is_bounded_and_box_in_original_pixels(engine):
    rng = np.random.default_rng(1)
    big = rng.integers(0, 60, size=(900, 1200, 3), dtype=np.uint8)
    big[300:700, 400:900] = 220
    a = engine.analyze(big, "random", 16)
    assert a.record["processed_size"] == {"width": 160, "height": 120}
    assert a.box_image.shape == (120, 160, 3)
    assert _inside(a.record["lost"]["box"], 1200, 900)
    expected = Localizer(engine.explainer("random", 16)[0].backbone, max_side=160)(big)
    assert a.record["lost"]["box"] == [round(v, 2) for v in expected.box]


def test_memory_cap_follows_stride():
    eng = Engine(max_side=None)
    assert [eng.max_side_for(s) for s in (8, 16, 32)] == [512, 1024, 2048]
    assert Engine(max_side=1024).max_side_for(8) == 512


def test_cache_is_lru_and_bounded(random_backbone, textured_image):
    eng = Engine(cache_size=1)
    eng.add(random_backbone)
    assert eng.cached() == [("random", 16)]
    a = eng.analyze(textured_image, "random", 16)
    assert a.record["backbone_loaded_now"] is False
    b = eng.analyze(textured_image, "random", 32)
    assert b.record["backbone_loaded_now"] is True and b.record["stride"] == 32
    assert eng.cached() == [("random", 32)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("imagenet", ""), "resnet50-0676ba61.pth"),
        (("dino", ""), "dino_resnet50_pretrain.pth"),
        ((CHECKPOINT, ""), "needs a path"),
        ((CHECKPOINT, "/nonexistent/pul.safetensors"), "no such weights file"),
    ],
)
def test_missing_weights_are_an_error_line_not_a_crash(handlers, textured_image, args, expected):
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        out = handlers.run(textured_image, *args, 16, 100, "gradcam", "")
    assert out[:5] == (None, None, None, None, None) and out[6] is None
    assert expected in out[5]["error"] and "\n" not in out[5]["error"]
    assert out[7].startswith("⚠ **error:**") and expected in out[7]


def test_wrong_hash_file_is_reported(handlers, weights_dir, textured_image):
    weights_dir.mkdir()
    (weights_dir / "resnet50-0676ba61.pth").write_bytes(b"not the real weights")
    with pytest.warns(UserWarning):
        out = handlers.run(textured_image, "imagenet", "", 16, 100, "gradcam", "")
    assert "does not match" in out[5]["error"]


def test_headless_backbone_uses_the_embedding_target(tmp_path, textured_image):
    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    # any headless ResNet50 state dict under the DINO file name (DINO publishes no hash)
    torch.manual_seed(3)
    state = {k: v for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    torch.save(state, weights_dir / W.REGISTRY["dino"].filename)
    h = Handlers(Engine(weights_dir=weights_dir, max_side=128), ResultFiles())
    assert "missing" not in dict((v, lbl) for lbl, v in h.dropdown_choices())["dino"]
    *_, record, _, status = h.run(textured_image, "dino", "", 16, 100, "gradcam", "")
    assert record["backbone"] == "dino" and "note" not in record
    assert record["cam"]["target_name"] == EMBEDDING_TARGET and record["cam"]["probability"] is None
    assert "Done" in status


@pytest.mark.parametrize(
    ("image", "method", "target", "expected"),
    [
        (None, "gradcam", "", "no image"),
        ("bad-file", "gradcam", "", "cannot read image 'photo.jpg': not a recognised image format"),
        ("empty-file", "gradcam", "", "cannot read image 'empty.png': empty file (0 bytes)"),
        ("ok", "eigencam", "tabby", "class-agnostic"),
        ("ok", "gradcam", "tabbby", "did you mean"),
        ("ok", "gradcam", "5000", "out of range"),
        ("ok", "saliency", "", "CAM method"),
    ],
)
def test_user_errors_become_one_line(handlers, tmp_path, textured_image, image, method, target, expected):
    if image == "bad-file":
        image = tmp_path / "photo.jpg"
        image.write_text("this is text")
        image = str(image)
    elif image == "empty-file":
        image = tmp_path / "empty.png"
        image.touch()
        image = str(image)
    elif image == "ok":
        image = textured_image
    with pytest.warns(UserWarning):
        out = handlers.run(image, "random", "", 16, 100, method, target)
    assert expected in out[5]["error"] and "\n" not in out[5]["error"]
    assert out[0] is None


def test_image_check_says_at_once_what_is_wrong(handlers, tmp_path, textured_image):
    good, text, empty = tmp_path / "object.png", tmp_path / "notes.jpg", tmp_path / "empty.jpg"
    Image.fromarray(textured_image).save(good)
    text.write_text("not a picture")
    empty.touch()
    assert handlers.check_image(str(good)) == "Image 'object.png', 128 × 96: press **Run**."
    assert handlers.check_image(str(text)) == "⚠ **error:** cannot read image 'notes.jpg': not a recognised image format"
    assert handlers.check_image(str(empty)) == "⚠ **error:** cannot read image 'empty.jpg': empty file (0 bytes)"
    assert handlers.check_image(None) == ""


def test_image_input_leaves_decoding_to_the_handler(tmp_path):
    """Gradio's own gr.Image opens the file with PIL before the handler runs; ours hands it over."""
    component = image_input()
    assert not Path(components.__file__).with_suffix(".pyi").exists()  # no gr.Image subclass: no stub written
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    assert component.preprocess(ImageData(path=str(text), orig_name="notes.jpg")) == str(text)
    assert component.preprocess(None) is None
    inline = "data:image/png;base64," + base64.b64encode(b"not a picture either").decode()
    saved = component.preprocess(ImageData(url=inline, orig_name="inline.png"))
    assert Path(saved).name == "inline.png" and Path(saved).read_bytes() == b"not a picture either"


def test_detector_panel_follows_the_result():
    records = ({"detector": {"boxes": [], "scores": []}}, {"lost": {}}, {"error": "no image"}, None)
    assert [Handlers.detector_shown(r)["visible"] for r in records] == [True, False, False, False]


def test_detector_boxes_and_scores_are_drawn_and_recorded(engine, handlers, textured_image, tiny_detector):
    from discovery import Detector

    analysis = engine.analyze(textured_image, "random", 16, 100, "gradcam", None, detector=str(tiny_detector), top_k=3)
    found = analysis.record["detector"]
    expected = Detector(tiny_detector)(textured_image, top_k=3)
    assert found["sha256"] == W.sha256_file(tiny_detector) and found["top_k"] == 3
    assert 1 <= len(found["boxes"]) == len(found["scores"]) <= 3
    assert found["boxes"] == expected.to_json()["boxes"] and found["scores"] == expected.to_json()["scores"]
    assert found["scores"] == sorted(found["scores"], reverse=True)
    assert all(_inside(b, 128, 96) for b in found["boxes"])
    image = analysis.detector_image
    assert image.shape == textured_image.shape and image.dtype == np.uint8 and not np.array_equal(image, textured_image)
    assert engine.detector(tiny_detector)[1] is False  # cached: loaded once
    assert engine.analyze(textured_image, "random", 16, 100, "gradcam", None, detector=str(tiny_detector),
                          top_k=1).record["detector"]["boxes"] == found["boxes"][:1]
    *_, found_image, record, _, status = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "",
                                                     str(tiny_detector), 3)
    assert record["detector"]["boxes"] == found["boxes"] and found_image is not None
    assert f"detector: {len(found['boxes'])} box" in status


@pytest.mark.parametrize(("detector", "top_k", "expected"), [
    ("/nonexistent/cad.safetensors", 5, "no such file"),
    ("PLAIN", 5, "not a detector checkpoint"),
    ("TINY", 0, "top-k must be"),
])
def test_bad_detector_inputs_become_one_line(handlers, tmp_path, textured_image, tiny_detector, detector, top_k, expected):
    if detector == "PLAIN":
        detector = tmp_path / "plain.safetensors"
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(2)}, str(detector))
    elif detector == "TINY":
        detector = tiny_detector
    with pytest.warns(UserWarning):
        out = handlers.run(textured_image, "random", "", 16, 100, "gradcam", "", str(detector), top_k)
    assert expected in out[5]["error"] and "\n" not in out[5]["error"] and out[4] is None


def test_result_files_keep_the_newest():
    files = ResultFiles(keep=2)
    paths = [files.write({"n": n}) for n in range(3)]
    assert not paths[0].exists() and paths[1].exists() and json.loads(paths[2].read_text()) == {"n": 2}
    assert len({p.parent for p in paths}) == 3


# --- UI wiring and CLI -----------------------------------------------------------------------


def test_build_demo_wires_the_endpoints_and_limits(handlers):
    config = AppConfig(max_upload_mb=2, concurrency=2, queue_size=30)
    demo = build_demo(config, handlers.engine)
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"run", "describe"} <= names
    images = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Image)}
    assert images["input-image"].preprocess(ImageData(path="notes.jpg")) == "notes.jpg"  # not opened here
    panels = ["box-image", "degree-image", "mask-image", "cam-image", "detector-image"]
    assert all(images[name].format == "png" for name in panels)  # lossless, not Gradio's default WebP
    assert demo._queue.max_size == 30
    options = launch_options(config)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["max_file_size"] == 2 * 1024 * 1024
    assert options["enable_monitoring"] is False


def test_cli_rejects_bad_settings_in_one_line(capsys):
    assert main(["--max-upload-mb", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["--stride", "7"])
    assert exc.value.code == 2


def test_cli_reports_a_busy_port(capsys, weights_dir):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["--port", str(port), "--backbone", "random", "--weights-dir", str(weights_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot serve on 127.0.0.1") and "Traceback" not in err


def test_a_checkpoint_can_be_the_initial_backbone(engine):
    h = Handlers(engine, ResultFiles(), preferred="pul:runs/pul.safetensors")
    assert (h.initial, h.initial_checkpoint) == (CHECKPOINT, "pul:runs/pul.safetensors")
    assert "pul:runs/pul.safetensors" in h.opening_status(h.initial, h.initial_checkpoint)


def test_cli_rejects_an_unknown_backbone(capsys):
    assert main(["--backbone", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone 'resnet18'") and err.count("\n") == 1
