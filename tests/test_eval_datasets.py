"""Benchmark loading (eval.datasets): the CorLoc protocol's ground-truth rules on hand-made
annotations, the accepted folder layouts, and one-line errors for wrong roots and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discovery.eval.cli import main
from discovery.eval.datasets import DatasetError, coco_box, image_paths, open_dataset
from discovery.eval.fetch import fetch_coco20k_list


def _jpeg(path: Path, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[0], size[1], 3), 128, np.uint8)).save(path)


def _obj(box, difficult=0, truncated=0, name="cat") -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def write_voc(folder: Path, annotations: dict[str, str]) -> Path:
    """A VOC<year> folder: ``annotations`` maps an id to the XML body (objects)."""
    for image_id, body in annotations.items():
        _jpeg(folder / "JPEGImages" / f"{image_id}.jpg")
        ann = folder / "Annotations" / f"{image_id}.xml"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(f"<annotation><filename>{image_id}.jpg</filename>{body}</annotation>")
    split = folder / "ImageSets" / "Main" / "trainval.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("".join(f"{i}\n" for i in annotations))
    return folder


@pytest.fixture
def voc_root(tmp_path):
    write_voc(
        tmp_path / "VOCdevkit" / "VOC2007",
        {
            "000005": _obj((1, 1, 500, 375)) + _obj((48, 240, 195, 371), difficult=1),
            "000007": _obj((10, 20, 30, 40), truncated=1) + _obj((5, 6, 7, 8), difficult=1),  # only hard objects
            "000009": _obj((100, 50, 200, 150)) + _obj((1, 2, 3, 4), truncated=1),
        },
    )
    return tmp_path


def test_voc_boxes_are_one_based_inclusive_to_zero_based_exclusive(voc_root):
    ds = open_dataset("voc07", voc_root)
    assert [it.image_id for it in ds.items] == ["000005", "000007", "000009"]
    first = ds.items[0]
    assert first.path == voc_root.resolve() / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000005.jpg"
    assert first.boxes.dtype == np.float64
    np.testing.assert_array_equal(first.boxes, [[0, 0, 500, 375], [47, 239, 195, 371]])
    assert ds.split == "trainval" and ds.expected_count == 5011


def test_difficult_and_truncated_kept_by_default_dropped_with_no_hard(voc_root):
    default = open_dataset("voc07", voc_root)
    assert [len(it.boxes) for it in default.items] == [2, 2, 2]
    assert default.dropped_no_gt == 0

    no_hard = open_dataset("voc07", voc_root, no_hard=True)
    assert [it.image_id for it in no_hard.items] == ["000005", "000009"]  # 000007 had only hard objects
    assert no_hard.dropped_no_gt == 1 and no_hard.no_hard
    np.testing.assert_array_equal(no_hard.items[0].boxes, [[0, 0, 500, 375]])
    np.testing.assert_array_equal(no_hard.items[1].boxes, [[99, 49, 200, 150]])


def test_image_without_objects_is_kept_by_default(tmp_path):
    write_voc(tmp_path / "VOC2007", {"000001": "", "000002": _obj((1, 1, 4, 4))})
    ds = open_dataset("voc07", tmp_path / "VOC2007")
    assert [len(it.boxes) for it in ds.items] == [0, 1]
    assert ds.items[0].boxes.shape == (0, 4)
    assert [it.image_id for it in open_dataset("voc07", tmp_path / "VOC2007", no_hard=True).items] == ["000002"]


@pytest.mark.parametrize("layout", ["ROOT/VOCdevkit/VOC2012", "ROOT=VOCdevkit", "ROOT=VOC2012"])
def test_voc_root_layouts(tmp_path, layout):
    folder = write_voc(tmp_path / "VOCdevkit" / "VOC2012", {"2008_000002": _obj((3, 4, 5, 6))})
    root = {"ROOT/VOCdevkit/VOC2012": tmp_path, "ROOT=VOCdevkit": tmp_path / "VOCdevkit", "ROOT=VOC2012": folder}[layout]
    ds = open_dataset("voc12", root)
    assert ds.root == folder.resolve()
    assert [it.image_id for it in ds.items] == ["2008_000002"]
    np.testing.assert_array_equal(ds.items[0].boxes, [[2, 3, 5, 6]])


def test_another_years_folder_is_not_taken_for_voc07(tmp_path):
    folder = write_voc(tmp_path / "VOC2012", {"2008_000002": _obj((3, 4, 5, 6))})
    with pytest.raises(DatasetError, match="VOC2012 is another year's folder"):
        open_dataset("voc07", folder)


def test_wrong_root_prints_expected_tree_and_contents(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    assert main(["score", "--dataset", "voc07", "--root", str(tmp_path), "--predictions", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no PASCAL VOC2007 trainval under {tmp_path}\n")
    assert "ROOT/VOCdevkit/VOC2007/" in err and "ImageSets/Main/trainval.txt" in err and "Annotations/<id>.xml" in err
    assert "lacks Annotations/, ImageSets/Main/trainval.txt" in err
    assert f"found in {tmp_path}: VOCdevkit/, images/, notes.txt" in err
    assert "Traceback" not in err


def test_missing_root_is_one_line(tmp_path, capsys):
    assert main(["score", "--dataset", "voc12", "--root", str(tmp_path / "nope"), "--predictions", "p.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: dataset root {tmp_path / 'nope'} does not exist\n"


@pytest.mark.parametrize(
    "body, message",
    [
        (None, "missing annotation"),
        ("<annotation><object><name>cat", "malformed annotation"),
        ("<annotation><object><name>cat</name></object></annotation>", "has no <bndbox>"),
        ("<annotation>" + _obj(("a", 1, 2, 3)) + "</annotation>", "non-numeric bndbox"),
    ],
)
def test_bad_voc_annotation_names_the_file_or_is_skipped(tmp_path, capsys, body, message):
    folder = write_voc(tmp_path / "VOC2007", {"000001": _obj((1, 1, 4, 4)), "000002": _obj((1, 1, 4, 4))})
    bad = folder / "Annotations" / "000002.xml"
    if body is None:
        bad.unlink()
    else:
        bad.write_text(body)
    with pytest.raises(DatasetError) as info:
        open_dataset("voc07", folder)
    assert message in str(info.value) and str(bad) in str(info.value) and "--skip-bad" in str(info.value)
    assert "\n" not in str(info.value)

    ds = open_dataset("voc07", folder, skip_bad=True)
    assert [it.image_id for it in ds.items] == ["000001"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == "000002"

    assert main(["score", "--dataset", "voc07", "--root", str(folder), "--predictions", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(bad) in err


def test_missing_voc_image_names_the_file(tmp_path):
    folder = write_voc(tmp_path / "VOC2007", {"000001": _obj((1, 1, 4, 4))})
    (folder / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(DatasetError, match="missing image .*000001.jpg"):
        open_dataset("voc07", folder)
    assert open_dataset("voc07", folder, skip_bad=True).items == []


# --- COCO20k ------------------------------------------------------------------------------------


def write_coco(folder: Path, images: dict[int, list[dict]], listed: list[int], images_sub="train2014", prefix="train2014/"):
    """COCO layout: ``images`` maps an id to its annotations (bbox, iscrowd); ``listed`` goes in the list file."""
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, anns in images.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        _jpeg(folder / images_sub / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": 8, "height": 8})
        for ann in anns:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1, **ann})
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "instances_train2014.json").write_text(json.dumps(coco))
    (folder / "coco_20k_filenames.txt").write_text("".join(f"{prefix}COCO_train2014_{i:012d}.jpg\n" for i in listed))
    return folder


def test_coco_rounding_matches_python_round_half_to_even():
    assert coco_box([0.5, 1.5, 2.0, 3.0]) == (0, 2, 2, 4)  # 0.5→0, 1.5→2, 2.5→2, 4.5→4
    assert coco_box([10.4, 20.6, 5.2, 4.4]) == (10, 21, 16, 25)
    assert coco_box([3, 4, 5, 6]) == (3, 4, 8, 10)


@pytest.fixture
def coco_root(tmp_path):
    return write_coco(
        tmp_path / "coco",
        {
            9: [{"bbox": [0.5, 1.5, 2.0, 3.0], "iscrowd": 0}, {"bbox": [0, 0, 8, 8], "iscrowd": 1}],
            25: [{"bbox": [10.4, 20.6, 5.2, 4.4], "iscrowd": 0}, {"bbox": [1, 1, 2, 2], "iscrowd": 0}],
            30: [{"bbox": [1, 1, 2, 2], "iscrowd": 0}],  # not in the list
            42: [{"bbox": [0, 0, 4, 4], "iscrowd": 1}],  # only crowd: evaluated, always a miss
        },
        listed=[25, 9, 42],
    )


def test_coco20k_list_filters_and_orders_iscrowd_dropped(coco_root):
    ds = open_dataset("coco20k", coco_root)
    assert [it.image_id for it in ds.items] == ["25", "9", "42"]
    np.testing.assert_array_equal(ds.items[0].boxes, [[10, 21, 16, 25], [1, 1, 3, 3]])
    np.testing.assert_array_equal(ds.items[1].boxes, [[0, 2, 2, 4]])
    assert ds.items[2].boxes.shape == (0, 4)
    assert ds.items[1].path == coco_root.resolve() / "train2014" / "COCO_train2014_000000000009.jpg"
    assert ds.image_list == (coco_root / "coco_20k_filenames.txt").resolve()
    assert not ds.official_list and ds.expected_count == 19817


@pytest.mark.parametrize("layout", ["ROOT", "parent", "images/train2014"])
def test_coco_root_layouts_and_plain_list_names(tmp_path, layout):
    sub = "images/train2014" if layout == "images/train2014" else "train2014"
    folder = write_coco(tmp_path / "coco", {7: [{"bbox": [1, 2, 3, 4], "iscrowd": 0}]}, [7], images_sub=sub, prefix="")
    ds = open_dataset("coco20k", tmp_path if layout == "parent" else folder)
    assert [it.image_id for it in ds.items] == ["7"] and ds.items[0].path.is_file()
    np.testing.assert_array_equal(ds.items[0].boxes, [[1, 2, 4, 6]])


def test_coco_explicit_image_list_and_missing_list(coco_root, tmp_path):
    custom = tmp_path / "mine.txt"
    custom.write_text("COCO_train2014_000000000030.jpg\n")
    assert [it.image_id for it in open_dataset("coco20k", coco_root, image_list=custom).items] == ["30"]
    (coco_root / "coco_20k_filenames.txt").unlink()
    with pytest.raises(DatasetError, match="fetch-coco20k"):
        open_dataset("coco20k", coco_root)


def test_coco_listed_image_missing_from_annotations(coco_root, tmp_path):
    custom = tmp_path / "list.txt"
    custom.write_text("COCO_train2014_000000000009.jpg\nCOCO_train2014_000000000077.jpg\n")
    with pytest.raises(DatasetError, match="COCO_train2014_000000000077.jpg of list.txt is not in .*instances_train2014.json"):
        open_dataset("coco20k", coco_root, image_list=custom)
    ds = open_dataset("coco20k", coco_root, image_list=custom, skip_bad=True)
    assert [it.image_id for it in ds.items] == ["9"] and len(ds.skipped) == 1


def test_coco_malformed_annotations_name_the_file(coco_root, capsys):
    ann = coco_root / "annotations" / "instances_train2014.json"
    ann.write_text('{"images": [')
    with pytest.raises(DatasetError, match=f"malformed annotation {ann}"):
        open_dataset("coco20k", coco_root)
    image = {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}
    ann.write_text(json.dumps({"images": [image], "annotations": [{"image_id": 9, "bbox": [1, 2, 3, 4]}]}))
    (coco_root / "coco_20k_filenames.txt").write_text("COCO_train2014_000000000009.jpg\n")
    with pytest.raises(DatasetError, match=f"malformed annotation {ann}: missing key 'id'"):  # pycocotools indexes by id
        open_dataset("coco20k", coco_root)
    ann.write_text(json.dumps({"images": [image], "annotations": [{"id": 1, "image_id": 9, "bbox": [1, 2], "iscrowd": 0}]}))
    with pytest.raises(DatasetError, match=r"malformed annotation .* has bbox \[1, 2\]"):
        open_dataset("coco20k", coco_root)
    assert main(["score", "--dataset", "coco20k", "--root", str(coco_root), "--predictions", "p"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(ann) in err


def test_coco_wrong_root_and_option_misuse(tmp_path, coco_root):
    with pytest.raises(DatasetError) as info:
        open_dataset("coco20k", tmp_path / "coco" / "train2014")
    assert "annotations/instances_train2014.json" in str(info.value) and "found in" in str(info.value)
    with pytest.raises(DatasetError, match="VOC only"):
        open_dataset("coco20k", coco_root, no_hard=True)
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("voc2007", coco_root)


def test_fetch_coco20k_never_downloads_offline(tmp_path, capsys):
    with pytest.raises(DatasetError, match="downloads are off"):
        fetch_coco20k_list(tmp_path)
    assert main(["fetch-coco20k", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "coco_20k_filenames.txt" in err and not list(tmp_path.iterdir())


def test_image_paths_read_no_annotation(voc_root, coco_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    expected = [it.path for it in open_dataset("voc07", voc_root).items]
    for xml in (voc / "Annotations").iterdir():
        xml.write_text("<not xml")  # unreadable annotations do not matter to image_paths
    assert image_paths("voc07", voc_root) == expected
    listed = [it.path for it in open_dataset("coco20k", coco_root).items]
    (coco_root / "annotations" / "instances_train2014.json").write_text("{broken")
    assert image_paths("coco20k", coco_root) == listed
    with pytest.raises(DatasetError, match="no PASCAL VOC2012"):
        image_paths("voc12", voc_root)
