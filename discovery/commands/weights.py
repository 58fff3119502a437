"""``discovery weights list | fetch NAME | verify | path NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import options
from .. import weights as W


def register(p: argparse.ArgumentParser) -> None:
    """The options of `discovery weights`."""
    options.add_weights_dir(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="what is known and what is present").set_defaults(run=list_weights)
    fetch = actions.add_parser("fetch", help="download weights (needs a network)")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    options.add_download_timeout(fetch)
    fetch.set_defaults(run=fetch_weights)
    actions.add_parser("verify", help="check the hash of every present file").set_defaults(run=verify_weights)
    path = actions.add_parser("path", help="where a file must go, and its URL")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(run=path_weights)


def _downloadable() -> list[W.WeightsSpec]:
    return [spec for spec in W.REGISTRY.values() if spec.filename]


def _present(spec: W.WeightsSpec, weights_dir: Path | None) -> Path | None:
    return next((p for p in W.candidates(spec, weights_dir) if p.is_file()), None)


def list_weights(args: argparse.Namespace) -> int:
    for spec in W.REGISTRY.values():
        if spec.filename is None:
            state = "built in"
        else:
            found = _present(spec, args.weights_dir)
            state = f"present: {found}" if found else "missing"
        print(f"{spec.name:12} {state:60} {spec.description}")
    print(f"{'pul:PATH':12} {'a checkpoint made by `discovery pul train`':60} PUL-refined trunk")
    return 0


def fetch_weights(args: argparse.Namespace) -> int:
    for name in args.names:
        spec = W.get_spec(name)
        if spec.url is None:
            raise W.WeightsError(f"backbone {name!r} has nothing to download")
        found = _present(spec, args.weights_dir)
        if found:
            W.verify(found, spec)
            print(f"{name}: already present at {found}")
            continue
        print(f"{name}: {W.fetch(name, args.weights_dir, timeout=args.timeout)}")
    return 0


def verify_weights(args: argparse.Namespace) -> int:
    bad = 0
    for spec in _downloadable():
        found = _present(spec, args.weights_dir)
        if found is None:
            print(f"{spec.name:12} missing")
            continue
        try:
            digest = W.verify(found, spec)
        except W.WeightsError as err:
            print(f"{spec.name:12} BAD: {err}")
            bad += 1
            continue
        check = "ok" if spec.sha256_prefix else "no published hash to check"
        print(f"{spec.name:12} {check}  sha256={digest}  {found}")
    return 1 if bad else 0


def path_weights(args: argparse.Namespace) -> int:
    spec = W.get_spec(args.name)
    if spec.filename is None:
        print(f"{spec.name}: needs no file")
        return 0
    print(f"{(args.weights_dir or W.default_weights_dir()) / spec.filename}  (from {spec.url})")
    return 0
