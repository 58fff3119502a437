"""ViT backbones: DINO's position-embedding interpolation, DINO-format files by name (hash recorded,
wrong keys refused), timm ViTs, the feature map, Grad-CAM / EigenCAM against pytorch-grad-cam, and
the commands (locate --method tokencut, eval run, pul train / evidence) on random ViTs.

No ViT weights can be had here: every network is a seeded random init built by timm without a download.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

timm = pytest.importorskip("timm")

from discovery.backbones import load_backbone  # noqa: E402
from discovery.explain import Explainer  # noqa: E402
from discovery.localizer import Localizer  # noqa: E402
from discovery.vit import ViTTrunk, dino_pos_embed  # noqa: E402
from discovery.weights import WeightsError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def dino_formula(pos_embed: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """facebookresearch/dino's ``interpolate_pos_encoding`` as written there, on pixel sizes
    (its ``w`` is the image's height: ``B, nc, w, h = x.shape``)."""
    npatch = (height // patch) * (width // patch)
    n = pos_embed.shape[1] - 1
    if npatch == n and height == width:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = height // patch + 0.1, width // patch + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic",
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("size", [(224, 224), (240, 320), (320, 240), (16, 16), (368, 496), (224, 240)])
def test_position_embeddings_are_dinos(size):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 24)
    grid = (size[0] // 16, size[1] // 16)
    assert torch.equal(dino_pos_embed(pos, grid), dino_formula(pos, *size, 16))


def _small_vit(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()


def _hooked_keys(net, x: torch.Tensor, which: int = 1) -> torch.Tensor:
    """The reference's features: a hook on the last block's qkv during the full forward, CLS dropped."""
    seen = {}
    handle = net.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    try:
        net.forward_features(x)
    finally:
        handle.remove()
    qkv = seen["qkv"]
    b, t, _ = qkv.shape
    heads = net.blocks[-1].attn.num_heads
    parts = qkv.reshape(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return parts[which].transpose(1, 2).reshape(b, t, -1)[:, 1:]


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory) -> tuple[Path, dict]:
    """A DINO-format ViT-S/16 file (a plain state dict, DINO's key names) under the registry's file name."""
    folder = tmp_path_factory.mktemp("weights")
    state = _small_vit(3).state_dict()
    path = folder / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    return path, state


def test_dino_file_loads_by_name_with_its_hash(dino_file):
    path, state = dino_file
    backbone = load_backbone("dino-vits16", weights_dir=path.parent, download=False)
    assert backbone.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.stride == 16 and backbone.channels == 384 and not backbone.standardize
    assert backbone.fc is None and isinstance(backbone.trunk, ViTTrunk)
    loaded = backbone.trunk.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # at the training size DINO's interpolation is the identity, so the keys equal the hooked full forward's
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone.trunk(x).flatten(2).transpose(1, 2)
        reference = _hooked_keys(backbone.trunk.net, x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_dino_file_with_a_wrong_key_is_refused(dino_file, tmp_path, change):
    _, state = dino_file
    state = dict(state)
    if change == "missing":
        del state["blocks.3.attn.qkv.weight"]
    elif change == "unexpected":
        state["blocks.12.norm1.weight"] = torch.ones(384)
    else:
        state["pos_embed"] = torch.zeros(1, 10, 384)
    torch.save(state, tmp_path / "dino_deitsmall16_pretrain.pth")
    with pytest.raises(WeightsError) as err:
        load_backbone("dino-vits16", weights_dir=tmp_path, download=False)
    assert "\n" not in str(err.value) and "dino_deitsmall16_pretrain.pth" in str(err.value)


def test_missing_dino_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCOVERY_OFFLINE", "1")
    with pytest.raises(WeightsError, match="dino_deitsmall8_300ep_pretrain.pth"):
        load_backbone("dino-vits8", weights_dir=tmp_path)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_features_are_the_hooked_qkv_at_native_size(which):
    backbone = load_backbone("random-vits16", features=which)
    x = torch.randn(2, 3, 160, 208)
    with torch.no_grad():
        ours = backbone.trunk(x)
        net = backbone.trunk.net
        # the reference's full forward with DINO's interpolation, block by block
        tokens = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([net.cls_token.expand(2, -1, -1), tokens], dim=1) + dino_formula(net.pos_embed, 160, 208, 16)
        seen = {}
        handle = net.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
        try:
            net.norm(net.blocks(tokens))
        finally:
            handle.remove()
    parts = seen["qkv"].reshape(2, tokens.shape[1], 3, 6, 64).permute(2, 0, 3, 1, 4)
    reference = parts["qkv".index(which)].transpose(1, 2).reshape(2, tokens.shape[1], 384)[:, 1:]
    assert ours.shape == (2, 384, 10, 13)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), reference, rtol=1e-5, atol=1e-5)


def test_strides_features_and_refusals():
    assert load_backbone("random-vits8").stride == 8
    tokens = load_backbone("random-vits16", features="tokens")
    assert tokens.info.metadata["features"] == "tokens"
    with pytest.raises(ValueError, match="not a ViT"):
        load_backbone("random", features="q")
    with pytest.raises(ValueError, match="features must be one of"):
        load_backbone("random-vits16", features="x")


@pytest.fixture(scope="module")
def timm_vit_file(tmp_path_factory) -> Path:
    """A timm ViT-Tiny with a 10-way head, saved as a state dict file."""
    torch.manual_seed(1)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    with torch.no_grad():  # a head that does not start at zero, so class scores differ
        net.head.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("timm") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _photo() -> np.ndarray:
    from skimage import data

    return data.chelsea()[:208, :288]


def _grad_cam_library(path: Path, x: torch.Tensor, method: str, target: int | None):
    from pytorch_grad_cam import EigenCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from safetensors.torch import load_file

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, dynamic_img_size=True).eval()
    net.load_state_dict(load_file(str(path)))
    h, w = x.shape[2] // 16, x.shape[3] // 16

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    cls = GradCAM if method == "gradcam" else EigenCAM
    cam = cls(model=net, target_layers=[net.blocks[-1].norm1], reshape_transform=reshape)
    targets = None if target is None else [ClassifierOutputTarget(target)]
    return cam(input_tensor=x, targets=targets)[0]


@pytest.mark.parametrize("method,target", [("gradcam", 3), ("gradcam", None), ("eigencam", None)])
def test_vit_cams_equal_pytorch_grad_cam(timm_vit_file, method, target):
    backbone = load_backbone(f"timm:vit_tiny_patch16_224@{timm_vit_file}")
    assert backbone.num_classes == 10 and backbone.stride == 16
    localizer = Localizer(backbone, max_side=None)
    emb = localizer.embed(_photo())
    ours = Explainer(localizer).explain(emb, method=method, target=target)
    theirs = _grad_cam_library(timm_vit_file, emb.image.tensor[None], method, ours.target)
    assert ours.cam.shape == theirs.shape
    np.testing.assert_allclose(ours.cam, theirs, atol=1e-4)
    if method == "gradcam":
        logits = backbone.predict(emb.image.tensor[None])[0]
        assert ours.target == (target if target is not None else int(logits.argmax()))


def test_headless_vit_explains_its_embedding_norm():
    localizer = Localizer("random-vits16", max_side=None)
    res = Explainer(localizer)(_photo())
    assert res.target is None and "CLS" in res.target_name and res.cam.shape == (208, 288)
    with pytest.raises(ValueError, match="no classifier"):
        Explainer(localizer).check("gradcam", 3)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discovery", *args], cwd=cwd, capture_output=True, text=True,
                          env={"DISCOVERY_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_locate_tokencut_and_features_on_a_random_vit(tmp_path):
    from PIL import Image

    Image.fromarray(_photo()).save(tmp_path / "cat.png")
    done = _cli("locate", "cat.png", "--backbone", "random-vits8", "--method", "tokencut", "--tau", "0.3",
                "--out-dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["method"] == "tokencut" and record["tau"] == 0.3 and Path(tmp_path, record["overlay"]).is_file()
    assert "pipeline check" in done.stderr
    bad = _cli("locate", "cat.png", "--backbone", "random", "--features", "q", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a ViT" in bad.stderr


def test_eval_run_records_the_vit_path(tmp_path):
    from discovery.eval.synth import make_synthetic

    root = make_synthetic(tmp_path / "data", n=3, seed=0).out
    for method in ("lost", "tokencut"):
        out = tmp_path / method
        done = subprocess.run(
            [sys.executable, "-m", "eval", "run", "--dataset", "voc07", "--root", str(root), "--backbone", "random-vits16",
             "--method", method, "--out", str(out), "--no-progress"],
            cwd=ROOT, capture_output=True, text=True, env={"DISCOVERY_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr
        config = json.loads((out / "config.json").read_text())
        assert config["features"] == "k" and config["lost_standardize"] is False and config["stride"] == 16
        assert len((out / "predictions.jsonl").read_text().splitlines()) == 3


def test_pul_on_a_random_vit_and_its_evidence(tmp_path):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    photo = _photo()
    for i in range(4):
        Image.fromarray(np.roll(photo, 40 * i, axis=1)).save(images / f"{i}.png")
    out = tmp_path / "vit.safetensors"
    done = _cli("pul", "train", "--backbone", "random-vits16", "--images", "imgs", "--epochs", "1", "--batch-size", "2",
                "--input-size", "64", "--out", str(out), "--save-every-epoch", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trained = load_backbone(str(out))
    assert isinstance(trained.trunk, ViTTrunk) and not trained.standardize and trained.info.is_random
    base = load_backbone("random-vits16")
    changed = [k for k, v in trained.trunk.state_dict().items() if not torch.equal(v, base.trunk.state_dict()[k])]
    assert changed, "PUL changed no weight"
    epoch0 = tmp_path / "vit.epoch0.safetensors"
    done = _cli("pul", "evidence", "--checkpoints", "random-vits16", str(epoch0), str(out), "--images", "imgs",
                "--out", "ev", "--count", "2", "--no-plot", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "ev" / "token_norms.csv").read_text().splitlines()
    assert rows[0].startswith("checkpoint,median_norm") and len(rows) == 4
    stages = {line.split(",")[1] for line in (tmp_path / "ev" / "activations.csv").read_text().splitlines()[1:]}
    assert stages == {f"block{i}" for i in range(1, 13)}


def test_onednn_linears_keep_the_parameters_and_the_numbers():
    from discovery.vit import OneDNNLinear

    net = _small_vit()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trunk = ViTTrunk(net)
    assert all(type(m) is not torch.nn.Linear for m in net.blocks.modules())
    assert {k: v for k, v in net.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    linear = net.blocks[0].mlp.fc1
    assert isinstance(linear, OneDNNLinear)
    x = torch.randn(2, 7, linear.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias))  # with gradients: F.linear itself
    image = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = trunk(image)
    with torch.enable_grad():
        exact = trunk(image).detach()
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)


def test_a_timm_vit_with_registers_drops_them_from_features_and_token_norms(tmp_path):
    from discovery.images import prepare
    from discovery.pul.evidence import load_checkpoint, token_norms

    torch.manual_seed(3)
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    path = tmp_path / "reg4.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    checkpoint = load_checkpoint(f"timm:vit_small_patch14_reg4_dinov2@{path}")
    trunk = checkpoint.backbone.trunk
    assert trunk.prefix == 5 and checkpoint.backbone.stride == 14  # CLS + 4 registers
    x = torch.randn(1, 3, 70, 98, generator=torch.Generator().manual_seed(4))
    seen = {}
    handle = net.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    with torch.no_grad():
        try:
            net.forward_features(x)  # timm's own forward, its own position embeddings
        finally:
            handle.remove()
        ours = trunk(x)
    keys = seen["qkv"].reshape(1, 5 + 35, 3, 6, 64)[:, :, 1].reshape(1, 40, 384)[:, 5:]
    assert ours.shape == (1, 384, 5, 7)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), keys, rtol=1e-4, atol=1e-4)
    image = prepare(np.full((70, 98, 3), 120, np.uint8), checkpoint.backbone.mean, checkpoint.backbone.std, 14, None)
    norms = token_norms(checkpoint, [image])
    assert len(norms.norms) == 35 and norms.median > 0  # the patch tokens only


def test_pul_on_a_vit_with_registers_and_its_token_norms_before_and_after(tmp_path):
    from PIL import Image

    torch.manual_seed(5)
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "reg4.safetensors"))
    base = "timm:vit_small_patch14_reg4_dinov2@reg4.safetensors"
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.roll(_photo(), 40 * i, axis=1)).save(tmp_path / "imgs" / f"{i}.png")
    done = _cli("pul", "train", "--backbone", base, "--images", "imgs", "--epochs", "1", "--batch-size", "2",
                "--input-size", "56", "--lr", "0.01", "--out", "reg4-pul.safetensors", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trained = load_backbone(str(tmp_path / "reg4-pul.safetensors"))
    assert isinstance(trained.trunk, ViTTrunk) and trained.trunk.prefix == 5
    done = _cli("pul", "evidence", "--checkpoints", base, "pul:reg4-pul.safetensors", "--images", "imgs",
                "--out", "ev", "--count", "2", "--no-plot", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in (tmp_path / "ev" / "token_norms.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["vit_small_patch14_reg4_dinov2", "reg4-pul.safetensors"]  # the base, then after PUL
    assert all(float(r[1]) > 0 and 0 <= float(r[4]) <= 1 for r in rows)  # median norm, high-norm fraction
