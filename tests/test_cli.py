"""The ``discovery`` CLI end to end (subprocesses, ``--backbone random``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discovery", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_locate_good_and_bad_images(tmp_path, textured_image):
    good = tmp_path / "good.png"
    Image.fromarray(textured_image).save(good)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(textured_image[:, :, 0]).save(gray)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    out = cli("locate", str(good), str(empty), str(gray), str(text), str(nothing),
              "--backbone", "random", "--overlay-dir", str(tmp_path / "overlays"))
    assert out.returncode == 1
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(good), str(gray)]
    for r in records:
        x1, y1, x2, y2 = r["box"]
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
        assert len(r["seed"]) == 2 and r["backbone"] == "random" and r["weights_sha256"] == "random-seed0"
        assert Path(r["overlay"]).is_file()
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {empty}: empty file (0 bytes)",
        f"error: {text}: not a recognised image format",
        f"error: {nothing}: a folder with no images (looked recursively for .jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm)",
    ]
    assert "Traceback" not in out.stderr
    assert "pipeline check" in out.stderr
    assert "note: --overlay-dir is now --out-dir" in out.stderr  # the old spelling still works


def test_locate_takes_a_folder_of_images(tmp_path, textured_image):
    photos = tmp_path / "photos" / "sub"
    photos.mkdir(parents=True)
    for name in ("b.png", "a.jpg", ".hidden.png"):
        Image.fromarray(textured_image).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    out = cli("locate", str(tmp_path / "photos"), "--backbone", "random")
    assert out.returncode == 0, out.stderr
    assert [Path(json.loads(line)["image"]).name for line in out.stdout.splitlines()] == ["a.jpg", "b.png"]


def test_locate_overlay_shape(tmp_path, textured_image):
    img = tmp_path / "a.png"
    Image.fromarray(textured_image).save(img)
    out = cli("locate", str(img), "--backbone", "random", "--stride", "8", "--k", "5", "--out-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    overlay = np.asarray(Image.open(tmp_path / "a_random_lost.png"))
    # three 128 px panels with 8 px gaps; a title strip above, a colour-bar strip below, the random note
    title = 18  # strips are 18 px high on a 96 px panel
    assert overlay.shape == (title + 96 + title + title, 3 * 128 + 2 * 8, 3)
    assert (overlay[:title] < 128).any() and (overlay[-title:, :, 0] > overlay[-title:, :, 1]).any()  # ink; red note


def test_unknown_backbone_is_one_line(tmp_path, textured_image):
    img = tmp_path / "a.png"
    Image.fromarray(textured_image).save(img)
    out = cli("locate", str(img), "--backbone", "vgg")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: unknown backbone 'vgg'; valid: imagenet")


def test_missing_default_weights_is_one_line(tmp_path, textured_image):
    img = tmp_path / "a.png"
    Image.fromarray(textured_image).save(img)
    out = cli("locate", str(img))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "resnet50-0676ba61.pth" in out.stderr and "https://download.pytorch.org" in out.stderr


def test_demo_falls_back_to_random_when_offline(tmp_path):
    out = cli("demo", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["backbone"] == "random"
    assert "carrying on with backbone 'random': a pipeline check, not a result" in out.stderr
    assert Path(record["overlay"]).is_file()


def test_weights_commands(tmp_path):
    listing = cli("weights", "--weights-dir", str(tmp_path), "list")
    assert listing.returncode == 0
    assert "imagenet" in listing.stdout and "missing" in listing.stdout and "pipeline check" in listing.stdout
    where = cli("weights", "--weights-dir", str(tmp_path), "path", "dino")
    assert str(tmp_path / "dino_resnet50_pretrain.pth") in where.stdout and "dl.fbaipublicfiles.com" in where.stdout
    (tmp_path / "resnet50-11ad3fa6.pth").write_bytes(b"garbage")
    verify = cli("weights", "--weights-dir", str(tmp_path), "verify")
    assert verify.returncode == 1 and "imagenet-v2  BAD" in verify.stdout
    fetch = cli("weights", "--weights-dir", str(tmp_path), "fetch", "imagenet")
    assert fetch.returncode == 2 and fetch.stderr.startswith("error: downloads are off")


def test_bad_device_and_max_side_are_one_line(tmp_path, textured_image):
    img = tmp_path / "a.png"
    Image.fromarray(textured_image).save(img)
    for args, expected in (
        (["--device", "foo"], "is not a torch device"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "device"),
        (["--max-side", "-5"], "error: discovery locate: argument --max-side: must be 0 or more, got -5"),
    ):
        out = cli("locate", str(img), "--backbone", "random", *args)
        assert out.returncode == 2, out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1


def test_app_without_its_extra_is_one_line(tmp_path):
    """`discovery app` where Gradio is not installed (the package without `[app]`): one line naming the extra."""
    missing = tmp_path / "gradio"
    missing.mkdir()
    (missing / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'gradio'\", name='gradio')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "discovery", "app", "--port", "0"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr == "error: the app needs Gradio: pip install 'object-discovery[app]'\n"


def test_version_and_help():
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("discovery 0.")
    listing = cli("--help").stdout
    for command in ("locate", "demo", "explain", "pul", "cad", "weights", "eval", "reproduce", "app"):
        assert command in listing


def test_help_and_argument_errors_import_no_torch():
    """`discovery --help`, a command's `--help` and an argument error build only the parser they need:
    no torch (its import takes seconds; the bench times `discovery --help`)."""
    probe = ("import sys\nfrom discovery.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
    for argv in (["--help"], ["locate", "--help"], ["explain", "--help"], ["demo", "--help"], ["weights", "--help"],
                 ["locate", "x.jpg", "--k", "-3"], ["nope"], []):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.stderr.splitlines()[-1] == "no torch", (argv, out.stderr)
