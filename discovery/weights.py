"""Weights as data: the registry of known ResNet50 weights, and how files are found, verified and read.

Resolution order for a registry name (docs/weights.md): the weights folder
(:func:`default_weights_dir`: ``$DISCOVERY_WEIGHTS_DIR``, else a checkout's ``weights/``, else the
torch hub cache), then the torch hub cache (``$TORCH_HOME/hub/checkpoints``), then a download into
the weights folder when allowed. An installed package never writes into its own folder.
Every local file whose spec carries a hash prefix is checked against it on every load.

Nothing here touches the network unless :func:`fetch` or :func:`resolve` with ``download=True`` is
called, and ``DISCOVERY_OFFLINE=1`` turns every download off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .download import Checksum, DownloadError, file_digest, offline
from .download import download as download_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(Exception):
    """A weights problem a user can fix; ``str(err)`` is one line that says how."""


@dataclass(frozen=True)
class WeightsSpec:
    """One registry entry.

    Attributes:
        name: the name users type (``imagenet``, ``dino``...).
        url: where the file is published (``None``: nothing to download).
        filename: the file name under ``weights/`` and the hub cache.
        sha256_prefix: leading hex digits of the file's sha256 (``None``: none published).
        has_classifier: whether the file carries the 1000-way ImageNet ``fc`` layer.
        description: one line for listings.
        size_mb: the file's size in MiB, roughly, for the line printed before a download
            (``None``: not known here).
        mean, std: the per-channel RGB normalisation the weights were trained with (0..1 input).
        architecture: ``resnet50``, or the DINO ViT layout (``vits16``, ``vits8``, ``vitb16``,
            ``vitb8``: :data:`discovery.vit.DINO_SHAPES`).
    """

    name: str
    url: str | None
    filename: str | None
    sha256_prefix: str | None
    has_classifier: bool
    description: str
    size_mb: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    architecture: str = "resnet50"

    @property
    def is_vit(self) -> bool:
        return self.architecture != "resnet50"


_DINO = "https://dl.fbaipublicfiles.com/dino/"
REGISTRY: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in (
        WeightsSpec(
            name="imagenet",
            url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            filename="resnet50-0676ba61.pth",
            sha256_prefix="0676ba61",
            has_classifier=True,
            description="torchvision IMAGENET1K_V1 (LOST's published ResNet50 rows)",
            size_mb=98,
        ),
        WeightsSpec(
            name="imagenet-v2",
            url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
            filename="resnet50-11ad3fa6.pth",
            sha256_prefix="11ad3fa6",
            has_classifier=True,
            description="torchvision IMAGENET1K_V2",
            size_mb=98,
        ),
        WeightsSpec(
            name="dino",
            url="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
            filename="dino_resnet50_pretrain.pth",
            sha256_prefix=None,
            has_classifier=False,
            description="DINO self-supervised ResNet50 teacher (headless; no published hash)",
            size_mb=90,
        ),
        *(
            WeightsSpec(
                name=f"dino-{arch}",
                url=f"{_DINO}{folder}/{folder}.pth",
                filename=f"{folder}.pth",
                sha256_prefix=None,
                has_classifier=False,
                description=f"DINO self-supervised {label} (headless; no published hash){note}",
                size_mb=size,
                architecture=arch,
            )
            for arch, folder, label, size, note in (
                ("vits16", "dino_deitsmall16_pretrain", "ViT-S/16", 83, ""),
                ("vits8", "dino_deitsmall8_300ep_pretrain", "ViT-S/8", 83, " (LOST's 300-epoch file)"),
                ("vitb16", "dino_vitbase16_pretrain", "ViT-B/16", 328, ""),
                ("vitb8", "dino_vitbase8_pretrain", "ViT-B/8", 328, ""),
            )
        ),
        WeightsSpec(
            name="random",
            url=None,
            filename=None,
            sha256_prefix=None,
            has_classifier=True,
            description="seeded random init: a pipeline check, not a model",
        ),
    )
}

def get_spec(name: str) -> WeightsSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"{name!r} is not in the weights registry; valid: {', '.join(REGISTRY)}") from None


def checkout_weights_dir() -> Path | None:
    """The ``weights/`` folder of the source checkout this package runs from, or ``None`` when it
    runs installed (from site-packages: never a place to write)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "weights" / "README.md").is_file():
        return root / "weights"
    return None


def default_weights_dir() -> Path:
    """Where registry files are looked for first and downloaded to: ``$DISCOVERY_WEIGHTS_DIR``,
    else the checkout's ``weights/`` (running from a checkout), else the torch hub checkpoints
    folder (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    env = os.environ.get("DISCOVERY_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return checkout_weights_dir() or hub_checkpoints_dir()


def hub_checkpoints_dir() -> Path:
    """torch's own cache of downloaded weights, shared with torchvision."""
    import torch  # here, not at the top: the registry and names are read by parsers that need no torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def verify(path: Path, spec: WeightsSpec) -> str:
    """Return the file's sha256; raise :class:`WeightsError` if it contradicts ``spec``."""
    digest = sha256_file(path)
    if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        raise WeightsError(
            f"{path}: sha256 {digest[:8]}... does not match the expected {spec.sha256_prefix} "
            f"for {spec.name!r}; delete it and fetch again ({spec.url})"
        )
    return digest


def candidates(spec: WeightsSpec, weights_dir: Path | None = None) -> list[Path]:
    """Where a registry file may already be, in resolution order."""
    if spec.filename is None:
        return []
    first = (weights_dir or default_weights_dir()) / spec.filename
    hub = hub_checkpoints_dir() / spec.filename
    return [first] if first == hub else [first, hub]


def missing_message(spec: WeightsSpec, weights_dir: Path | None = None) -> str:
    """The one-line fix for a missing registry file when no download was tried."""
    return f"{_not_here(spec, weights_dir)}: save {spec.url} there, or run `discovery weights fetch {spec.name}`"


def _not_here(spec: WeightsSpec, weights_dir: Path | None) -> str:
    return f"{spec.filename} is not in {weights_dir or default_weights_dir()}"


def resolve(name: str, weights_dir: Path | None = None, download: bool = True) -> tuple[Path, str]:
    """Find (or fetch) the file for registry ``name``; return ``(path, sha256)``.

    Raises :class:`WeightsError` with a one-line fix when the file is missing and cannot be
    downloaded, or when a local file fails its hash check.
    """
    spec = get_spec(name)
    if spec.filename is None:
        raise WeightsError(f"backbone {name!r} has no weights file")
    for path in candidates(spec, weights_dir):
        if path.is_file():
            return path, verify(path, spec)
    if download:
        path = fetch(name, weights_dir)
        return path, sha256_file(path)
    raise WeightsError(missing_message(spec, weights_dir))


def fetch(name: str, weights_dir: Path | None = None, progress: bool = True, timeout: float | None = None) -> Path:
    """Download registry ``name`` into ``weights_dir`` (resumable, hash-checked before it is
    put in place), or raise :class:`WeightsError` (one line). ``timeout``: see
    :func:`discovery.download.download_timeout`."""
    spec = get_spec(name)
    if spec.url is None:
        raise WeightsError(f"backbone {name!r} has nothing to download")
    target = (weights_dir or default_weights_dir()) / spec.filename
    if offline():
        raise WeightsError(f"downloads are off (DISCOVERY_OFFLINE): {_not_here(spec, weights_dir)}; save {spec.url} there yourself")
    checksum = Checksum("sha256", spec.sha256_prefix) if spec.sha256_prefix else None
    label = f"{spec.filename} ({spec.size_mb} MB)" if spec.size_mb else spec.filename
    try:
        return download_file(spec.url, target, checksum, timeout=timeout, progress=progress, label=label)
    except DownloadError as err:
        kept = f"; {err.kept.stat().st_size} bytes kept in {err.kept.name}, resumed by the next download" if err.kept else ""
        raise WeightsError(
            f"{_not_here(spec, weights_dir)} and its download failed ({err.reason}{kept}); save {spec.url} there "
            "yourself (DISCOVERY_OFFLINE=1 skips downloads)"
        ) from None


# --- reading files without executing code ---------------------------------------------------

# DINO's full training checkpoint pickles its argparse.Namespace; that class, and nothing else,
# is allowed beyond torch's weights_only defaults.
SAFE_GLOBALS = [argparse.Namespace]

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_file(path: Path, strip: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file without executing code; return ``(tensors, metadata)``.

    ``strip``: for ``.pt``/``.pth``, also strip ResNet/DINO prefixes (:func:`extract_state_dict`);
    ``False`` keeps the key names as stored (other architectures).

    ``.safetensors`` files carry metadata in their JSON header under the key ``discovery``;
    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` and may carry a JSON
    sidecar ``<file>.json``. Raises :class:`WeightsError` (one line) for unreadable or unsafe files.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
        return tensors, _json_metadata(header.get("discovery", "{}"), path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        match = _UNSAFE_GLOBAL.search(str(err))
        if match:
            raise WeightsError(
                f"{path}: refused, unpickling it would need {match.group(1)} (only plain tensors "
                "and argparse.Namespace are allowed; weights_only=True)"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({first})") from None
    sidecar = path.with_name(path.name + ".json")
    meta = _json_metadata(sidecar.read_text(), sidecar) if sidecar.is_file() else {}
    return extract_state_dict(obj, path, strip), meta


def _json_metadata(text: str, source: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise WeightsError(f"{source}: metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{source}: metadata must be a JSON object")
    return meta


def extract_state_dict(obj: Any, path: Path, strip: bool = True) -> dict[str, torch.Tensor]:
    """Turn a loaded checkpoint into a plain state dict.

    Takes ``teacher`` (else ``state_dict`` / ``model``) from a training checkpoint. With ``strip``
    (ResNet50 files): strips ``module.`` and ``backbone.`` prefixes and drops ``head.*`` (DINO's
    projection head). ``fc.*`` is kept here: whether it is used is the backbone's decision.
    """
    import torch

    if isinstance(obj, dict):
        for key in ("teacher", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    if not strip:
        return dict(obj)
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head."):
            continue
        state[key] = value
    return state
