"""The Vision Transformer kind of backbone: DINO's ViTs by name (``dino-vits16`` ...), their seeded
random inits (``random-vits16`` ...) and timm's ViTs (``timm:vit_*``, DINOv2 with registers too).

The feature map is what LOST and TokenCut read (DESIGN §11, docs/protocol.md "ViT"): the output of
the last block's ``attn.qkv`` split into q / k / v with the heads concatenated back (LOST's hook),
or the block's output tokens; prefix tokens (CLS, registers) dropped; ``(B, C, h, w)`` on the
patch grid, so the patch size is the stride. Only the last block's ``qkv`` is computed for q / k /
v: the rest of that block and the final norm cannot change them, so the reference's full forward
gives the same numbers. Position embeddings at native size follow DINO's ``interpolate_pos_encoding``
for the ``dino-*`` and ``random-*`` names (:func:`dino_pos_embed`) and timm's own resampling for
``timm:`` names. The network itself is timm's ``VisionTransformer``, whose key names are DINO's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import external, onednn
from . import weights as W
from .backbone import Backbone, BackboneInfo, PooledTrunk, state_sha256
from .defaults import VIT_FEATURES

#: What the feature map holds: the last block's keys (LOST's and TokenCut's default), queries,
#: values, or its output tokens.
FEATURES = VIT_FEATURES
DEFAULT_FEATURES = FEATURES[0]
#: The architecture name ViT backbones record (``vit:<timm model>``).
ARCHITECTURE_PREFIX = "vit:"


@dataclass(frozen=True)
class ViTShape:
    """One DINO architecture, declared: the timm model that has DINO's key names and layout."""

    timm_model: str
    patch: int
    dim: int
    heads: int


#: ``dino-<key>`` / ``random-<key>`` → architecture (facebookresearch/dino ``vit_small`` / ``vit_base``).
DINO_SHAPES = {
    "vits16": ViTShape("vit_small_patch16_224", 16, 384, 6),
    "vits8": ViTShape("vit_small_patch8_224", 8, 384, 6),
    "vitb16": ViTShape("vit_base_patch16_224", 16, 768, 12),
    "vitb8": ViTShape("vit_base_patch8_224", 8, 768, 12),
}


def dino_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding``: ``(1, 1 + N, C)`` embeddings of a square ``√N × √N``
    training grid → ``(1, 1 + h·w, C)`` for an ``(h, w)`` grid, the CLS entry unchanged.

    Bicubic ``F.interpolate`` with ``scale_factor = ((h + 0.1)/√N, (w + 0.1)/√N)`` (the 0.1 keeps
    ``floor(scale · √N)`` at h, w); the same grid as training, square, is returned as it is."""
    n = pos_embed.shape[1] - 1
    h, w = grid
    side = math.sqrt(n)
    if h * w == n and h == w:
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    if tuple(patch.shape[-2:]) != (h, w):
        raise ValueError(f"position embeddings interpolated to {tuple(patch.shape[-2:])}, not {(h, w)}")
    return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same keys) whose CPU float32 inference product runs through
    oneDNN (:func:`discovery.onednn.linear`); with gradients, on a GPU or under autocast it is
    ``F.linear``. The two agree to float32 rounding (the bench checks the boxes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn.usable(x):
            return onednn.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_onednn_linears(blocks: nn.Module) -> None:
    """Swap every ``nn.Linear`` under ``blocks`` for a :class:`OneDNNLinear` sharing its parameters."""
    for parent in list(blocks.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                fast = OneDNNLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                    device="meta")
                fast.weight = child.weight
                fast.bias = child.bias
                setattr(parent, name, fast)


class ViTTrunk(PooledTrunk):
    """A timm ``VisionTransformer`` as a trunk: ``(B, 3, H, W)`` (H, W multiples of the patch) →
    ``(B, C, H/p, W/p)`` map of :attr:`features` from its last block.

    Args:
        net: the network (its classifier, if any, is used by :meth:`pooled`'s caller, not here).
        features: one of :data:`FEATURES`.
        pos_embed: ``dino`` (:func:`dino_pos_embed`; models with a CLS token and no registers) or
            ``timm`` (the model's own ``_pos_embed``, built with ``dynamic_img_size=True``).
    """

    def __init__(self, net: nn.Module, features: str = DEFAULT_FEATURES, pos_embed: str = "dino"):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"ViT features must be one of {', '.join(FEATURES)}, got {features!r}")
        if pos_embed not in ("dino", "timm"):
            raise ValueError(f"pos_embed must be 'dino' or 'timm', got {pos_embed!r}")
        if pos_embed == "dino" and (net.cls_token is None or net.reg_token is not None or net.no_embed_class):
            raise ValueError("DINO's position embeddings need a CLS token, no registers and embeddings that include it")
        use_onednn_linears(net.blocks)
        self.net = net
        self.features = features
        self.pos_embed = pos_embed
        self.patch = int(net.patch_embed.patch_size[0])
        self.prefix = int(net.num_prefix_tokens)

    @property
    def dim(self) -> int:
        return int(self.net.embed_dim)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding, prefix tokens and position embeddings: the stream entering the first
        block ``(B, prefix + h·w, C)``, and the patch grid ``(h, w)``."""
        net = self.net
        patches = net.patch_embed.proj(x)
        batch, dim, h, w = patches.shape
        stream = net.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        if self.pos_embed == "dino":
            stream = torch.cat([net.cls_token.expand(batch, -1, -1), stream], dim=1)
            stream = net.pos_drop(stream + dino_pos_embed(net.pos_embed, (h, w)))
        else:
            stream = net._pos_embed(stream.reshape(batch, h, w, dim))
        return net.norm_pre(net.patch_drop(stream)), (h, w)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The tokens entering the last block ``(B, prefix + h·w, C)`` and the patch grid ``(h, w)``."""
        tokens, grid = self.embed(x)
        for block in self.net.blocks[:-1]:
            tokens = block(tokens)
        return tokens, grid

    def grid_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, prefix + h·w, C)`` tokens → ``(B, C, h, w)`` map of the patch tokens."""
        patch = tokens[:, self.prefix:]
        return patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(x)
        last = self.net.blocks[-1]
        if self.features == "tokens":
            return self.grid_map(last(tokens), grid)
        batch, count, dim = tokens.shape
        qkv = last.attn.qkv(last.norm1(tokens)).reshape(batch, count, 3, last.attn.num_heads, -1)
        chosen = qkv[:, :, "qkv".index(self.features)].reshape(batch, count, dim)
        return self.grid_map(chosen, grid)

    def head_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last block's output tokens → what the classifier takes (timm's pooling: CLS after the
        final norm for DINO, plus ``fc_norm`` where the model has one)."""
        return self.net.forward_head(self.net.norm(tokens), pre_logits=True)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.tokens(x)
        return self.head_input(self.net.blocks[-1](tokens))

    def residual_stream(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output tokens ``(B, prefix + h·w, C)``, first block first (the paper's Fig. 6
        statistics and the patch-token norms read these)."""
        stream, _ = self.embed(x)
        outputs = []
        for block in self.net.blocks:
            stream = block(stream)
            outputs.append(stream)
        return outputs

    def cam(self, x: torch.Tensor, score) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad-CAM's inputs at the last block's ``norm1`` (pytorch-grad-cam's ViT target layer):
        its patch tokens as ``(B, C, h, w)`` activations and the gradient of ``score(head input)``
        (a scalar) with respect to them. The gradient flows through that block's attention branch,
        as a hook on ``norm1`` sees it; nothing stays attached to the model."""
        with torch.no_grad():
            tokens, grid = self.tokens(x)
        last = self.net.blocks[-1]
        with torch.inference_mode(False), torch.enable_grad():
            leaf = last.norm1(tokens).detach().clone().requires_grad_(True)
            handle = last.norm1.register_forward_hook(lambda module, args, out: leaf)
            try:
                out = last(tokens)
            finally:
                handle.remove()
            (grad,) = torch.autograd.grad(score(self.head_input(out)), leaf)
        return self.grid_map(leaf.detach(), grid), self.grid_map(grad, grid)


def _timm():
    try:
        import timm
    except ImportError:
        raise W.WeightsError("ViT backbones need timm: pip install 'object-discovery[timm]'") from None
    return timm


def is_timm_vit(model: str) -> bool:
    """Whether timm's ``model`` is one of its ``VisionTransformer`` models (declared by timm's registry)."""
    return bool(_timm().models.is_model_in_modules(model.split(".")[0], ["vision_transformer"]))


def vit_backbone(net: nn.Module, info: BackboneInfo, features: str, pos_embed: str, head: nn.Module | None,
                 mean=W.IMAGENET_MEAN, std=W.IMAGENET_STD) -> Backbone:
    """A timm ``VisionTransformer`` as a :class:`Backbone` (stride = patch size, no LOST standardisation)."""
    trunk = ViTTrunk(net, features, pos_embed)
    model = getattr(net, "default_cfg", {}).get("architecture") or type(net).__name__
    return Backbone(
        trunk, head, mean=mean, std=std, stride=trunk.patch, info=info, architecture=f"{ARCHITECTURE_PREFIX}{model}",
        channels=trunk.dim, standardize=False,
    )


def dino_network(shape: ViTShape) -> nn.Module:
    """An uninitialised-by-file DINO ViT: timm's model of the same layout, headless."""
    return _timm().create_model(shape.timm_model, pretrained=False, num_classes=0)


def load_dino_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a DINO ViT state dict ``strict`` (as LOST does); a missing, unexpected or mis-shaped key
    is a one-line :class:`~discovery.weights.WeightsError`."""
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # DINO's projection head, if saved
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise W.WeightsError(f"{source}: wrong tensor shapes for this ViT ({shapes[0] if shapes else err})") from None
    if result.missing_keys or result.unexpected_keys:
        problem = f"missing {result.missing_keys[0]}" if result.missing_keys else f"unexpected {result.unexpected_keys[0]}"
        raise W.WeightsError(f"{source}: not a DINO ViT state dict of this size ({problem})")


def shape_of(key: str) -> ViTShape:
    try:
        return DINO_SHAPES[key]
    except KeyError:
        raise W.WeightsError(f"unknown ViT {key!r}; valid: {', '.join(DINO_SHAPES)}") from None


def from_registry(name: str, features: str, weights_dir, download: bool) -> Backbone:
    """``dino-vits16`` ...: the registry file found or fetched, verified, loaded strict."""
    spec = W.get_spec(name)
    path, digest = W.resolve(name, weights_dir, download)
    state, meta = W.load_file(path, strip=False)
    state = W.extract_state_dict(state, path)
    net = dino_network(shape_of(spec.architecture))
    load_dino_state(net, state, str(path))
    info = BackboneInfo(name, digest, False, str(path), {**meta, "features": features})
    return vit_backbone(net, info, features, "dino", None, spec.mean, spec.std)


def random_vit(name: str, key: str, features: str, seed: int) -> Backbone:
    """``random-vits16`` ...: timm's seeded init of that DINO layout (a pipeline check)."""
    shape = shape_of(key)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = dino_network(shape)
    return vit_backbone(net.eval(), BackboneInfo(name, f"random-seed{seed}", False, metadata={"features": features}),
                        features, "dino", None)


def timm_vit(name: str, model: str, path: str | None, features: str, pretrained: bool = True) -> Backbone:
    """``timm:vit_*[@FILE]``: timm's ViT at native size (its own position-embedding resampling,
    ``dynamic_img_size=True``); the head, when the weights have one, on timm's pooled token.
    ``pretrained=False``: timm's init, nothing read (the layout for a checkpoint's weights)."""
    built = external.build_timm(name, model, path, pretrained=pretrained, dynamic_img_size=True)
    net = built.net
    head = net.get_classifier() if built.has_head and getattr(net, "num_classes", 0) else None
    net.reset_classifier(0)  # the trunk keeps no classifier weights; pooling stays timm's
    mean, std = external.timm_normalisation(net)
    digest = built.sha256 or state_sha256(net, head)
    file = str(Path(path).expanduser()) if path else None
    info = BackboneInfo(name, digest, head is not None, file, {**built.metadata, "features": features})
    return vit_backbone(net, info, features, "timm", head, mean, std)
