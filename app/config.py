"""The app's settings, as one frozen value shared by the CLI, the UI builder and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from discovery.defaults import DEFAULT_TAU, DISCOVERY_METHODS, STRIDES
from discovery.localizer import DEFAULT_MAX_SIDE
from discovery.names import parse_backbone_name
from discovery.weights import WeightsError


@dataclass(frozen=True)
class AppConfig:
    """Everything :func:`app.ui.build_demo` and :func:`app.ui.launch_options` need.

    Attributes:
        device: torch device for the backbones (``"cpu"``, ``"cuda"``...).
        weights_dir: folder of registry weights (``None``: the project's ``weights/``).
        download: fetch missing registry weights on first use (default off: no network I/O).
        backbone: the backbone selected when the page opens (falls back to ``random``, or
            ``random-vits16``... for a DINO ViT, with a visible note, when its weights are
            missing); stride: the initial stride.
        method, tau: the discovery method (``lost`` / ``tokencut``) and TokenCut's τ selected
            when the page opens; each query carries its own.
        max_side: longest image side (pixels) fed to the network; boxes stay in original pixels.
        max_upload_mb: largest accepted upload, in megabytes.
        cache_size: how many ``(backbone, stride)`` models stay loaded.
        concurrency: analyses running at once (the rest wait in the queue).
        queue_size: most requests waiting in the queue; more are refused politely.
        host, port, share: where the server listens; ``share`` opens a public Gradio link.
    """

    device: str = "cpu"
    weights_dir: Path | None = None
    download: bool = False
    backbone: str = "imagenet"
    stride: int = 16
    method: str = "lost"
    tau: float = DEFAULT_TAU
    max_side: int | None = DEFAULT_MAX_SIDE
    max_upload_mb: float = 20.0
    cache_size: int = 3
    concurrency: int = 1
    queue_size: int = 64
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False

    def __post_init__(self) -> None:
        checks = {
            "stride": self.stride in STRIDES,
            "method": self.method in DISCOVERY_METHODS,
            "tau": -1.0 <= self.tau <= 1.0,
            "max_upload_mb": self.max_upload_mb > 0,
            "cache_size": self.cache_size >= 1,
            "concurrency": self.concurrency >= 1,
            "queue_size": self.queue_size >= 1,
            "max_side": self.max_side is None or self.max_side >= 32,
            "port": 0 <= self.port <= 65535,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {bad[0]}: {getattr(self, bad[0])!r}")
        try:
            parse_backbone_name(self.backbone)
        except WeightsError as err:
            raise ValueError(str(err)) from None
