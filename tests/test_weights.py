"""Weights resolution, hash checks, DINO key handling and safe loading, on files the tests make."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from discovery import weights as W
from discovery.backbones import load_backbone
from discovery.download import DownloadError


def _state(seed: int = 0, stride_dilation=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def imagenet_state():
    return _state(1)


def _trust(monkeypatch, name: str, path: Path) -> None:
    """Make the registry expect ``path``'s real hash prefix (test files cannot have the real hash)."""
    spec = dataclasses.replace(W.REGISTRY[name], sha256_prefix=W.sha256_file(path)[:8])
    monkeypatch.setitem(W.REGISTRY, name, spec)


def test_missing_weights_give_one_line_with_file_place_and_url(tmp_path):
    with pytest.raises(W.WeightsError) as err:
        load_backbone("imagenet", weights_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "resnet50-0676ba61.pth" in msg and str(tmp_path) in msg
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg


def test_wrong_hash_under_the_real_name_is_refused(tmp_path, imagenet_state):
    torch.save(imagenet_state, tmp_path / "resnet50-0676ba61.pth")
    with pytest.raises(W.WeightsError, match="does not match the expected 0676ba61"):
        load_backbone("imagenet", weights_dir=tmp_path)


def test_verified_file_loads_with_classifier(tmp_path, monkeypatch, imagenet_state):
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(imagenet_state, path)
    _trust(monkeypatch, "imagenet", path)
    bb = load_backbone("imagenet", weights_dir=tmp_path)
    assert bb.info.sha256 == W.sha256_file(path)
    assert bb.info.has_classifier and bb.fc is not None
    assert torch.equal(bb.trunk[0].weight, imagenet_state["conv1.weight"])
    assert torch.equal(bb.fc.weight, imagenet_state["fc.weight"])
    assert not any(p.requires_grad for p in bb.parameters())


def test_hub_cache_is_searched_after_weights_dir(tmp_path, monkeypatch, imagenet_state):
    hub = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    path = hub / "resnet50-11ad3fa6.pth"
    torch.save(imagenet_state, path)
    _trust(monkeypatch, "imagenet-v2", path)
    bb = load_backbone("imagenet-v2", weights_dir=tmp_path)
    assert bb.info.path == str(path)


def test_dino_full_checkpoint_teacher_prefixes_and_namespace(tmp_path):
    state = _state(2)
    teacher = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 2048)
    student = {f"module.{k}": v + 1 for k, v in teacher.items()}
    ckpt = {"teacher": teacher, "student": student, "epoch": 100, "args": argparse.Namespace(arch="resnet50")}
    torch.save(ckpt, tmp_path / "dino_resnet50_pretrain.pth")
    bb = load_backbone("dino", weights_dir=tmp_path)
    assert not bb.info.has_classifier and bb.fc is None
    assert torch.equal(bb.trunk[0].weight, state["conv1.weight"])  # teacher, not student


def test_dino_plain_state_dict_with_module_prefix(tmp_path):
    state = {f"module.{k}": v for k, v in _state(3).items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "dino_resnet50_pretrain.pth")
    assert load_backbone("dino", weights_dir=tmp_path).fc is None


def test_prefix_mismatch_does_not_pass_silently(tmp_path):
    state = {f"encoder.{k}": v for k, v in _state(4).items()}
    torch.save(state, tmp_path / "dino_resnet50_pretrain.pth")
    with pytest.raises(W.WeightsError, match="not a ResNet50 state dict: missing"):
        load_backbone("dino", weights_dir=tmp_path)


def test_wrong_shapes_are_refused(tmp_path):
    state = _state(5)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "custom.pt")
    with pytest.raises(W.WeightsError, match="wrong tensor shapes") as err:
        load_backbone(str(tmp_path / "custom.pt"))
    assert "\n" not in str(err.value)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(W.WeightsError, match="refused") as err:
        load_backbone(str(tmp_path / "evil.pth"))
    assert not marker.exists()
    assert "\n" not in str(err.value)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(W.WeightsError) as err:
        load_backbone("resnet9000")
    for name in ("imagenet", "imagenet-v2", "dino", "random", "pul:PATH"):
        assert name in str(err.value)


def test_pul_safetensors_checkpoint_with_metadata(tmp_path):
    state = {k: v.contiguous() for k, v in _state(6).items()}
    path = tmp_path / "refined.safetensors"
    save_file(state, str(path), metadata={"discovery": json.dumps({"base": "imagenet", "epochs": 3})})
    bb = load_backbone(f"pul:{path}")
    assert bb.info.metadata == {"base": "imagenet", "epochs": 3}
    assert bb.info.has_classifier
    assert torch.equal(bb.trunk[0].weight, state["conv1.weight"])


def test_corrupt_checkpoint_gives_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(W.WeightsError) as err:
        load_backbone(f"pul:{path}")
    assert "\n" not in str(err.value)
    with pytest.raises(W.WeightsError, match="no such weights file"):
        load_backbone(f"pul:{tmp_path / 'absent.safetensors'}")


def test_fetch_is_refused_offline(tmp_path):
    with pytest.raises(W.WeightsError, match="downloads are off") as err:
        W.fetch("imagenet", tmp_path)
    assert "weights fetch" not in str(err.value)  # the command that was refused is not suggested


@pytest.mark.parametrize("kept_bytes", [0, 10])
def test_a_failed_download_names_a_kept_part_only_when_it_has_bytes(tmp_path, monkeypatch, kept_bytes):
    monkeypatch.delenv("DISCOVERY_OFFLINE")
    part = tmp_path / "resnet50-0676ba61.pth.part"
    if kept_bytes:
        part.write_bytes(b"x" * kept_bytes)

    def failing(url, dest, *args, **kwargs):
        raise DownloadError(f"download of {url} failed", "nothing received for 30 s", part if kept_bytes else None)

    monkeypatch.setattr(W, "download_file", failing)
    with pytest.raises(W.WeightsError) as err:
        W.fetch("imagenet", tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.count(str(tmp_path)) == 1 and "DISCOVERY_OFFLINE=1" in msg
    assert "(nothing received for 30 s" in msg and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert ("10 bytes kept in resnet50-0676ba61.pth.part" in msg) == bool(kept_bytes)
    assert (".part" in msg) == bool(kept_bytes)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_random_backbone_is_seeded_and_strided(stride):
    a = load_backbone("random", stride=stride)
    b = load_backbone("random", stride=stride)
    assert torch.equal(a.trunk[0].weight, b.trunk[0].weight)
    assert a.info.is_random and a.info.sha256 == "random-seed0"
    with torch.inference_mode():
        out = a(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 2048, 64 // stride, 96 // stride)


def test_bad_stride_is_refused():
    with pytest.raises(ValueError, match="stride"):
        load_backbone("random", stride=4)


def test_malformed_metadata_names_the_file(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save(_state(7), path)
    sidecar = tmp_path / "custom.pt.json"
    sidecar.write_text("{broken")
    with pytest.raises(W.WeightsError, match=f"{sidecar}: metadata is not valid JSON"):
        load_backbone(str(path))
