"""``python -m app``: parse the command line and launch the Gradio app (a thin layer over :mod:`app.ui`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from discovery.backbones import STRIDES, check_device
from discovery.localizer import DEFAULT_MAX_SIDE
from discovery.weights import backbone_names

from .config import AppConfig


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Gradio app: LOST object discovery and Grad-CAM on ResNet50, side by side.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, MB (default 20)")
    p.add_argument(
        "--backbone", default="imagenet",
        help=f"backbone selected at start: {', '.join(backbone_names())} (default imagenet; "
        "falls back to random, with a note, when its weights are missing)",
    )
    p.add_argument("--stride", type=int, default=16, choices=STRIDES, help="initial stride (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder of weights files (default: weights/)")
    p.add_argument(
        "--download", action="store_true",
        help="fetch missing registry weights when a run needs them (default: never touch the network)",
    )
    p.add_argument(
        "--max-side", type=int, default=DEFAULT_MAX_SIDE,
        help=f"longest image side fed to the network, pixels (default {DEFAULT_MAX_SIDE}); boxes stay in original pixels",
    )
    p.add_argument("--cache-size", type=int, default=3, help="(backbone, stride) models kept loaded (default 3)")
    p.add_argument("--concurrency", type=int, default=1, help="analyses running at once (default 1)")
    p.add_argument("--queue-size", type=int, default=64, help="requests allowed to wait (default 64)")
    return p


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Raises ValueError (one line) for an out-of-range setting."""
    return AppConfig(
        device=args.device, weights_dir=args.weights_dir, download=args.download, backbone=args.backbone,
        stride=args.stride, max_side=args.max_side, max_upload_mb=args.max_upload_mb, cache_size=args.cache_size,
        concurrency=args.concurrency, queue_size=args.queue_size, host=args.host, port=args.port, share=args.share,
    )


def main(argv: list[str] | None = None, prog: str = "python -m app") -> int:
    """``python -m app`` in a checkout; ``discovery app`` when installed (``prog`` names which)."""
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
        check_device(config.device)  # a typo in --device, or cuda without a GPU, fails here in one line
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .ui import build_demo, launch_options

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: binding {config.host}: the app is reachable from other machines", file=sys.stderr)
    demo = build_demo(config)
    try:
        _, local_url, share_url = demo.launch(**launch_options(config), quiet=True, prevent_thread_lock=True)
    except OSError as err:  # port taken, address not available
        print(f"error: cannot serve on {config.host}:{config.port} ({str(err).splitlines()[0]}); try --port", file=sys.stderr)
        return 2
    print(f"app running at {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0
