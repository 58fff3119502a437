"""Faithful re-creations of the two references' ViT evaluation loops, the baselines our ViT path
must beat and the oracle its boxes must equal:

- LOST on keys (valeoai/LOST ``main_lost.py``, ``--arch vit_small --which_features k``), the box
  from :func:`bench.reference.reference_lost` (its ``lost``, ``patch_scoring`` and ``detect_box``);
- TokenCut (YangtaoWANG95/TokenCut ``main_tokencut.py``), the box from
  :func:`bench.reference_tokencut.reference_ncut` (its ``ncut``: ``scipy.linalg.eigh`` on the
  dense generalised problem).

What they keep from the references: batch 1 and no DataLoader workers, ``ToTensor`` + ImageNet
``Normalize``, zero padding to a multiple of the patch, DINO's ``VisionTransformer`` forward as
``get_last_selfattention`` runs it (``prepare_tokens`` with ``interpolate_pos_encoding``, every
block but the last in full, the last block's ``norm1`` and attention with its explicit softmax),
a forward hook on the last block's ``attn.qkv``, the ``reshape(B, N, 3, heads, -1).permute(2, 0,
3, 1, 4)`` split, and the CLS token dropped (by LOST before ``lost``, by TokenCut inside ``ncut``).
What they leave out: ``.cuda()`` (device is a parameter), and the references' registration of a
new hook on every image (each writes the same output; one hook is registered per loop). The
network's weights are read from a timm ``VisionTransformer`` with DINO's layout (the key names
are DINO's), on a copy whose linear layers are torch's ``nn.Linear`` (:func:`reference_network`);
no code is shared with ``discovery``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .reference import IMAGENET_MEAN, IMAGENET_STD, load_padded, order_defined, reference_lost
from .reference_tokencut import ncut_defined, reference_ncut

def reference_network(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode whose linear layers are torch's own ``nn.Linear`` (DINO's
    arithmetic: ``F.linear``), whatever subclass a caller's network uses."""
    net = copy.deepcopy(net).eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    return net


def interpolate_pos_encoding(net: nn.Module, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """DINO's ``VisionTransformer.interpolate_pos_encoding`` (``w``, ``h``: the padded image's
    height and width, in DINO's names)."""
    npatch = x.shape[1] - 1
    N = net.pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return net.pos_embed
    class_pos_embed = net.pos_embed[:, 0]
    patch_pos_embed = net.pos_embed[:, 1:]
    dim = x.shape[-1]
    patch = net.patch_embed.patch_size[0]
    w0 = w // patch
    h0 = h // patch
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def prepare_tokens(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINO's ``prepare_tokens``: patch embedding, CLS token, interpolated position embeddings."""
    B, nc, w, h = x.shape
    x = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
    cls_tokens = net.cls_token.expand(B, -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    x = x + interpolate_pos_encoding(net, x, w, h)
    return x


def attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's ``Attention.forward``: ``(output, attention weights)``, the softmax written out."""
    attn_module = block.attn
    B, N, C = x.shape
    heads = attn_module.num_heads
    qkv = attn_module.qkv(x).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return attn_module.proj(x), attn


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINO's ``Block.forward`` (no drop-path at evaluation)."""
    y, _ = attention(block, block.norm1(x))
    x = x + y
    mlp = block.mlp
    return x + mlp.fc2(mlp.act(mlp.fc1(block.norm2(x))))


def get_last_selfattention(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINO's ``get_last_selfattention``: every block but the last, then the last one's attention."""
    x = prepare_tokens(net, x)
    for i, blk in enumerate(net.blocks):
        if i < len(net.blocks) - 1:
            x = block_forward(blk, x)
        else:
            return attention(blk, blk.norm1(x))[1]
    raise ValueError("a network without blocks")


def hooked_keys(net: nn.Module, img: torch.Tensor, feat_out: dict) -> torch.Tensor:
    """The forward pass and the references' split of the hooked ``qkv``: ``(1, 1 + N, C)`` keys."""
    attentions = get_last_selfattention(net, img[None, :, :, :])
    nb_im, nh, nb_tokens = attentions.shape[0], attentions.shape[1], attentions.shape[2]
    qkv = feat_out["qkv"].reshape(nb_im, nb_tokens, 3, nh, -1 // nh).permute(2, 0, 3, 1, 4)
    k = qkv[1]
    return k.transpose(1, 2).reshape(nb_im, nb_tokens, -1)


def reference_keys(paths: Sequence[Path], net: nn.Module, device: str = "cpu") -> Iterator[tuple[torch.Tensor, tuple[int, int], torch.Size]]:
    """Per image of ``paths``, as both references compute them: the hooked keys ``(1, 1 + N, C)``
    (CLS first), the grid ``(h, w)`` and the unpadded image's shape ``(3, H, W)``."""
    net = reference_network(net).to(device)
    patch_size = int(net.patch_embed.patch_size[0])
    feat_out: dict = {}

    def hook_fn_forward_qkv(module, input, output):
        feat_out["qkv"] = output

    handle = net.blocks[-1].attn.qkv.register_forward_hook(hook_fn_forward_qkv)
    try:
        for path in paths:
            img, init_image_size = load_padded(path, IMAGENET_MEAN, IMAGENET_STD, patch_size)
            img = img.to(device)
            with torch.no_grad():
                k = hooked_keys(net, img, feat_out)
            yield k, (img.shape[-2] // patch_size, img.shape[-1] // patch_size), init_image_size
    finally:
        handle.remove()


def reference_vit_loop(paths: Sequence[Path], net: nn.Module, method: str, k_patches: int = 100, tau: float = 0.2,
                       eps: float = 1e-5, device: str = "cpu") -> tuple[list[list[float]], float]:
    """Box per image, one image at a time, as ``main_lost.py`` (``method="lost"``) or
    ``main_tokencut.py`` (``"tokencut"``) runs; also the seconds spent after the forward pass
    (``lost`` or ``ncut``), so the post-processing's share of the loop can be reported."""
    if method not in ("lost", "tokencut"):
        raise ValueError(f"method must be 'lost' or 'tokencut', got {method!r}")
    patch_size = int(net.patch_embed.patch_size[0])
    scales = [patch_size, patch_size]
    boxes, post_s = [], 0.0
    for k, dims, init_image_size in reference_keys(paths, net, device):
        start = time.perf_counter()
        with torch.no_grad():
            if method == "lost":
                box, _, _ = reference_lost(k[:, 1:, :], dims, scales, init_image_size[1:], k_patches)
            else:
                pred, *_ = reference_ncut(k, dims, scales, init_image_size, tau, eps)
                box = [float(v) for v in pred]
        post_s += time.perf_counter() - start
        boxes.append(box)
    return boxes, post_s


def reference_defined(path: Path, net: nn.Module, method: str, k_patches: int = 100, tau: float = 0.2) -> bool:
    """Whether the reference's box on ``path`` is defined by the features (no tie its sort or its
    solver would break: :func:`~bench.reference.order_defined`, :func:`~bench.reference_tokencut.ncut_defined`)."""
    ((k, dims, _),) = reference_keys([path], net, str(next(net.parameters()).device))
    k = k.cpu()
    return order_defined(k[:, 1:], dims, k_patches) if method == "lost" else ncut_defined(k, dims, tau)
