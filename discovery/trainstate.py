"""Files shared by the trainers (PUL, CAD): safetensors checkpoints with JSON metadata, and the
resumable training state (weights, optimiser, generators) written atomically and read back with
``weights_only=True``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write, stale_temporaries


class TrainingStateError(ValueError):
    """A resume file that is unreadable or belongs to another run; ``str(err)`` is one line."""


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives: ``OUT.state.pt``."""
    return out.with_name(out.name + ".state.pt")


def check_files(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace ``out`` without ``overwrite``, to resume without a state file, and to
    start over a stale state file without ``resume`` or ``overwrite`` (one line each)."""
    state = state_path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if resume and not state.is_file():
        raise FileNotFoundError(f"nothing to resume: {state} does not exist")
    if state.exists() and not resume and not overwrite:
        raise FileExistsError(f"{state} is left from an interrupted run; pass --resume to continue it or --overwrite to start over")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete what a killed run left half-written beside ``out``: the temporaries of ``out`` and of
    its state file whose writer is gone. Returns them."""
    stale = stale_temporaries(out) + stale_temporaries(state_path(out))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``tensors`` as safetensors with ``metadata`` as JSON under the header key ``discovery``
    (atomically: a temporary file, then ``os.replace``)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"discovery": json.dumps(metadata, sort_keys=True)}))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors / numbers / strings / lists, atomically (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path, expected: dict[str, Any], state_format: str, what: str) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` and check it belongs to this run
    (``state_format``: the ``format`` it must carry; ``what``: the trainer's name in messages).

    Raises:
        TrainingStateError: unreadable, or written for a different configuration (names the first difference).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingStateError(f"{path}: not a readable {what} training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise TrainingStateError(f"{path}: not a {what} training state")
    saved = state.get("config", {})
    for key in expected:
        if saved.get(key) != expected[key]:
            raise TrainingStateError(
                f"{path} was written by a different run ({key}: {saved.get(key)!r} there, {expected[key]!r} now); "
                "use the same options, or --overwrite to start over"
            )
    return state


def rng_state() -> dict[str, Any]:
    """torch / numpy / random generator states as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    np.random.set_state(("MT19937", saved["numpy"].numpy().astype(np.uint32), saved["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in saved["python"].tolist()), None))


def restore(
    state_file: Path, expected: dict[str, Any], state_format: str, what: str, model_key: str,
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: bool, overwrite: bool, dist,
) -> int:
    """The step a trainer starts at: with ``resume``, the saved state's (its weights under
    ``model_key``, the optimiser and the generators are restored); else 0, after removing a stale
    state file when ``overwrite``. Every rank calls this (it ends on a barrier)."""
    step = 0
    if resume:
        saved = load_state(state_file, expected, state_format, what)
        model.load_state_dict(saved[model_key])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        step = int(saved["step"])
    elif dist.is_main and overwrite:
        state_file.unlink(missing_ok=True)
    dist.barrier()
    return step
