"""Decoding and shape bucketing (eval.loader), the method registry, and `eval synth`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from discovery.eval.cli import main
from discovery.eval.datasets import Item, open_dataset
from discovery.eval.loader import Decoded, DecodeDataset, bucketed, decoded_stream, load_image, read_rgb
from discovery.eval.methods import METHODS, get_method
from discovery.eval.synth import synthetic_images
from discovery.images import decode
from discovery.weights import IMAGENET_MEAN, IMAGENET_STD


def test_load_image_keeps_stored_pixel_frame_and_pads(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise" on display
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(path, exif=exif)
    assert decode(path)[0].shape[:2] == (40, 20)  # the app/API path honours EXIF...
    prepared = load_image(path, IMAGENET_MEAN, IMAGENET_STD, 16)
    assert prepared.size == prepared.original_size == (20, 40)  # ...the benchmark path keeps the annotated frame
    assert prepared.tensor.shape == (3, 32, 48) and prepared.tensor.dtype == torch.float32
    assert torch.all(prepared.tensor[:, 20:, :] == 0) and torch.all(prepared.tensor[:, :, 40:] == 0)


def test_unreadable_image_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    ds = DecodeDataset([Item("g", good, np.zeros((0, 4))), Item("b", bad, np.zeros((0, 4)))], 16, chunk=2)
    assert len(ds) == 1
    first, second = ds[0].unpack(16)
    assert first.rgb.shape == (16, 16, 3) and first.padded == (16, 16) and first.error is None
    assert second.rgb is None and second.error.startswith(f"cannot read image {bad}: ") and "\n" not in second.error


def _decoded(i: int, hw: tuple[int, int] | None) -> Decoded:
    item = Item(str(i), Path(f"{i}.jpg"), np.zeros((0, 4)))
    if hw is None:
        return Decoded(item, None, None, "cannot read image")
    return Decoded(item, np.zeros((*hw, 3), np.uint8), hw)


def test_bucketing_never_mixes_padded_shapes_and_keeps_every_image_once():
    rng = np.random.default_rng(0)
    shapes = [(32, 48), (48, 32), (64, 64), (32, 48)]
    stream = [_decoded(i, shapes[int(rng.integers(0, 4))] if i % 17 else None) for i in range(60)]
    batches = list(bucketed(iter(stream), batch_size=3, max_waiting=5))
    seen = [d.item.image_id for b in batches for d in b]
    assert sorted(seen, key=int) == [str(i) for i in range(60)]
    for batch in batches:
        assert 1 <= len(batch) <= 3
        if batch[0].rgb is None:
            assert len(batch) == 1
        else:
            assert len({d.padded for d in batch}) == 1
    assert any(len(b) == 3 for b in batches)
    again = [[d.item.image_id for d in b] for b in bucketed(iter(stream), batch_size=3, max_waiting=5)]
    assert again == [[d.item.image_id for d in b] for b in batches]  # a pure function of the order
    with pytest.raises(ValueError):
        list(bucketed(iter(stream), batch_size=0))


def test_bucketing_bounds_waiting_images():
    # 8 distinct shapes, batch 4: never more than max_waiting images held back
    stream = [_decoded(i, (16 * (1 + i % 8), 16)) for i in range(40)]
    produced, consumed = 0, 0

    def counting():
        nonlocal consumed
        for d in stream:
            consumed += 1
            yield d

    for batch in bucketed(counting(), batch_size=4, max_waiting=6):
        produced += len(batch)
        assert consumed - produced <= 6
    assert produced == 40


def test_decoded_stream_workers_keep_order(tmp_path):
    items = []
    for i, hw in enumerate([(16, 24), (40, 16), (16, 24)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((*hw, 3), 10 * i, np.uint8)).save(path)
        items.append(Item(str(i), path, np.zeros((0, 4))))
    inline = list(decoded_stream(items, 16, workers=0))
    for chunk in (1, 2, 8):
        pooled = list(decoded_stream(items, 16, workers=2, chunk=chunk))
        assert [d.item.image_id for d in pooled] == ["0", "1", "2"]
        for a, b in zip(inline, pooled):
            np.testing.assert_array_equal(a.rgb, b.rgb)
            assert a.padded == b.padded


def _jpeg_variants(folder: Path) -> list[Path]:
    """JPEGs as cameras and datasets write them: VOC sizes, odd sizes, 4:4:4 / 4:2:2 / 4:2:0
    subsampling, baseline and progressive, several qualities, plus grayscale and CMYK ones."""
    from discovery.eval.synth import make_image

    rng = np.random.default_rng(5)
    paths = []
    sizes = [(375, 500), (500, 375), (333, 500), (37, 51), (17, 16), (1, 9)]
    for i in range(24):
        rgb = make_image(rng, i, sizes[i % len(sizes)]).rgb if min(sizes[i % len(sizes)]) > 30 else rng.integers(
            0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)
        path = folder / f"{i:02d}.jpg"
        Image.fromarray(rgb).save(path, quality=(60, 75, 90, 95)[i % 4], subsampling=i % 3, progressive=bool(i % 2))
        paths.append(path)
    gray, cmyk = folder / "gray.jpg", folder / "cmyk.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(gray)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).convert("CMYK").save(cmyk)
    return paths + [gray, cmyk]


def test_jpeg_decoding_gives_pils_pixels(tmp_path):
    for path in _jpeg_variants(tmp_path):
        with Image.open(path) as img:
            expected = np.array(img.convert("RGB"))
        got = read_rgb(path)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=path.name)


def test_jpeg_fast_path_is_taken_for_colour_jpegs(tmp_path, monkeypatch):
    import discovery.eval.loader as L

    calls = []
    real = L._decode_jpeg_rgb
    monkeypatch.setattr(L, "_decode_jpeg_rgb", lambda data: calls.append(real(data)) or calls[-1])
    paths = _jpeg_variants(tmp_path)
    for path in paths:
        read_rgb(path)
    assert len(calls) == len(paths)
    assert sum(c is not None for c in calls) == len(paths) - 2  # grayscale and CMYK go through PIL


def test_method_registry():
    assert "lost" in METHODS and get_method("lost") is METHODS["lost"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_synth_writes_both_layouts_with_known_boxes(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "8", "--seed", "3"], prog="discovery eval") == 0
    out = capsys.readouterr().out
    assert "VOC2007" in out and f"\n  discovery eval run --dataset voc07 --root {tmp_path / 's'} --backbone random" in out
    root = tmp_path / "s"
    voc = open_dataset("voc07", root)
    truth = synthetic_images(8, 3)
    assert len(voc.items) == 8
    for item, image in zip(voc.items, truth):
        assert Image.open(item.path).size == image.rgb.shape[1::-1]
        np.testing.assert_array_equal(item.boxes, [o.box for o in image.objects])
    objects = [o for image in truth for o in image.objects]
    assert any(o.difficult for o in objects) and any(o.truncated for o in objects)
    assert all(o.difficult for o in truth[1].objects)
    assert len(open_dataset("voc07", root, no_hard=True).items) <= 7
    sizes = {im.rgb.shape[:2] for im in truth}
    padded = {(-(-h // 16) * 16, -(-w // 16) * 16) for h, w in sizes}
    assert len(padded) < len(sizes) < 8  # repeated sizes, and different sizes sharing a padded shape

    assert [it.image_id.split("_")[0] for it in open_dataset("voc12", root / "VOCdevkit").items] == ["2008"] * 8
    coco = open_dataset("coco20k", root / "coco")
    assert len(coco.items) == 7  # the list leaves the last image out
    anns = json.loads((root / "coco" / "annotations" / "instances_train2014.json").read_text())["annotations"]
    crowd = {a["image_id"] for a in anns if a["iscrowd"]}
    assert crowd
    for item in coco.items:
        plain = [a for a in anns if a["image_id"] == int(item.image_id) and not a["iscrowd"]]
        assert len(item.boxes) == len(plain)
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "t"), "--n", "0"])
    assert exit_info.value.code == 2 and "argument --n: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_synth_refuses_a_folder_holding_a_dataset(tmp_path, capsys):
    real = tmp_path / "data" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    real.mkdir(parents=True)
    (real / "trainval.txt").write_text("REAL\n")
    assert main(["synth", "--out", str(tmp_path / "data"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "already holds VOCdevkit/" in err and err.count("\n") == 1
    assert (real / "trainval.txt").read_text() == "REAL\n"
    assert main(["synth", "--out", str(tmp_path / "data"), "--n", "2", "--overwrite"]) == 0
