"""``python -m app`` / ``discovery app``: parse the command line and launch the Gradio app (a thin
layer over :mod:`discovery.app.ui`)."""

from __future__ import annotations

import argparse
import sys

from discovery import options
from discovery.backbone import check_device
from discovery.defaults import DEFAULT_TAU, DISCOVERY_METHODS
from discovery.localizer import DEFAULT_MAX_SIDE

from .config import AppConfig


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    p = options.Parser(
        prog=prog,
        description="Gradio app: LOST or TokenCut object discovery and Grad-CAM on a ResNet50 or a ViT, side by side.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, MB (default 20)")
    # the backbone selected at start falls back to its random init, with a note, when its weights are missing
    options.add_model(p, features=False)
    p.add_argument("--method", default="lost", choices=DISCOVERY_METHODS,
                   help="discovery method selected when the page opens (default lost; each run can pick another)")
    options.add_tau(p, DEFAULT_TAU)
    p.add_argument(
        "--download", action="store_true",
        help="fetch missing registry weights when a run needs them (default: never touch the network)",
    )
    options.add_max_side(p, DEFAULT_MAX_SIDE)
    p.add_argument("--cache-size", type=options.positive_int, default=3, help="(backbone, stride) models kept loaded (default 3)")
    p.add_argument("--concurrency", type=options.positive_int, default=1, help="analyses running at once (default 1)")
    p.add_argument("--queue-size", type=options.positive_int, default=64, help="requests allowed to wait (default 64)")
    return p


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Raises ValueError (one line) for an out-of-range setting."""
    return options.from_args(AppConfig, args, max_side=args.max_side or None)


def main(argv: list[str] | None = None, prog: str = "python -m app") -> int:
    """``python -m app`` in a checkout; ``discovery app`` when installed (``prog`` names which)."""
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
        check_device(config.device)  # a typo in --device, or cuda without a GPU, fails here in one line
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        from .ui import build_demo, launch_options
    except ModuleNotFoundError as err:
        if err.name not in ("gradio", "gradio_client"):
            raise
        print("error: the app needs Gradio: pip install 'object-discovery[app]'", file=sys.stderr)
        return 2

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: binding {config.host}: the app is reachable from other machines", file=sys.stderr)
    demo = build_demo(config)
    try:
        _, local_url, share_url = demo.launch(**launch_options(config), quiet=True, prevent_thread_lock=True)
    except OSError:  # port taken, address not available (Gradio's own text advises launch() arguments)
        print(f"error: cannot serve on {config.host}:{config.port} (in use or not an address of this machine); "
              "choose another with --port N, or --host", file=sys.stderr)
        return 2
    print(f"app running at {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0
