"""An ``eval run`` folder: its layout, its files, and the rule that one folder holds one config.

Layout::

    RUN_DIR/config.json              what decides the boxes (dataset, root, method, weights, stride, k...)
    RUN_DIR/predictions.jsonl        one line per finished image (the single-process stream, and the merge)
    RUN_DIR/predictions.rankR.jsonl  rank R's stream under torchrun (merged into the above at the end)
    RUN_DIR/results.json             the summary, written when the run completes

``eval run`` claims a folder with its config (:meth:`RunFolder.claim`), streams into it and
finishes it; ``eval score RUN_DIR`` and other commands read it (:meth:`RunFolder.read`).
A folder whose config differs is refused, unless it holds no prediction yet (a run that failed
before its first image leaves nothing worth keeping, so the corrected command takes the folder over).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from discovery.files import stale_temporaries, write_text_atomic
from discovery.weights import sha256_file

from . import predictions as P
from .errors import RunError

CONFIG = "config.json"
PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"


def config_diffs(stored: Mapping, wanted: Mapping) -> list[str]:
    """``"k: -3 there, 50 now"`` for every key of ``wanted`` whose stored value differs."""
    return [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in wanted.items() if stored.get(k) != v]


@dataclass(frozen=True)
class RunContents:
    """What a run folder holds, for a command that reads it (``eval score``, LOST+CAD's pseudo-boxes).

    ``config``: its config.json; ``records``: image id → prediction line (file order; torn or
    invalid lines dropped, ``dropped`` counts them); ``*_sha256``: the two files' hashes (provenance)."""

    folder: Path
    config: dict
    records: dict[str, dict]
    dropped: int
    config_sha256: str
    predictions_sha256: str

    @property
    def dataset(self) -> str:
        """``voc07`` / ``voc12`` / ``coco20k``."""
        return self.config["dataset"]

    @property
    def root(self) -> Path:
        """The resolved dataset folder the run read (``.../VOC2007`` for VOC, the COCO folder for COCO20k)."""
        return Path(self.config["root"])


class RunFolder:
    """``RUN_DIR`` of ``eval run``. Only rank 0 writes config.json, predictions.jsonl and results.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def _rank_files(self) -> list[Path]:
        return sorted(self.path.glob("predictions.rank*.jsonl"))

    def read_config(self) -> dict:
        """config.json; :class:`RunError` (one line) when it is missing or not a run config."""
        if not self.config_file.is_file():
            raise RunError(f"{self.path} is not an `eval run` folder (no {CONFIG})")
        try:
            config = json.loads(self.config_file.read_text())
        except ValueError:
            raise RunError(f"{self.config_file} is not valid JSON; delete the run folder or choose another --out") from None
        if not isinstance(config, dict) or not {"dataset", "root"} <= set(config):
            raise RunError(f"{self.config_file} is not an `eval run` config (no dataset and root)")
        return config

    def has_predictions(self) -> bool:
        """Whether any finished image (or a results.json) is there to lose."""
        streams = [self.predictions, *self._rank_files()]
        return self.results.exists() or any(P.load_records(path).records for path in streams)

    def claim(self, config: dict) -> None:
        """Make this the folder of a run with ``config``: write config.json in a new folder (or over
        the config of a run that stopped before its first prediction), accept the same config, and
        refuse (:class:`RunError`) a folder with predictions made with another config, or with none."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path} exists and is not a directory")
        if self.config_file.exists():
            try:
                diffs = config_diffs(self.read_config(), config)
            except RunError:
                if self.has_predictions():
                    raise
                diffs = ["unreadable"]
            if not diffs:
                return
            if self.has_predictions():
                raise RunError(
                    f"{self.path} holds a run with a different config ({'; '.join(diffs)}); choose another --out or delete that folder"
                )
            print(f"note: {self.path} held no prediction yet; its config is replaced ({'; '.join(diffs)})", file=sys.stderr)
        elif self.has_predictions():
            raise RunError(f"{self.path} holds predictions but no {CONFIG}; choose another --out or delete that folder")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, P.dumps(config) + "\n")

    def collect(self) -> dict[str, dict]:
        """Repair predictions.jsonl, fold in the rank files a killed distributed run left, and
        return every finished record by image id (rank 0, after :meth:`claim`)."""
        for stale in stale_temporaries(self.predictions):  # a rewrite a kill interrupted
            stale.unlink(missing_ok=True)
        records = P.load_records(self.predictions, repair=True).records
        rank_files = self._rank_files()
        extra = []
        for part in rank_files:
            for image_id, record in P.load_records(part).records.items():
                if image_id not in records:
                    records[image_id] = record
                    extra.append(record)
        self.merge(extra)
        return records

    def stream(self, rank: int | None) -> IO[str]:
        """The file a process appends its records to: predictions.jsonl for a single process,
        a fresh predictions.rankR.jsonl for rank R of a distributed run."""
        self.path.mkdir(parents=True, exist_ok=True)  # other nodes may not share rank 0's file system
        if rank is None:
            return open(self.predictions, "a")
        return open(self.path / f"predictions.rank{rank}.jsonl", "w")

    def remove_stream(self, rank: int) -> None:
        (self.path / f"predictions.rank{rank}.jsonl").unlink(missing_ok=True)

    def merge(self, records: Iterable[dict]) -> None:
        """Append ``records`` (gathered from the ranks) to predictions.jsonl; drop the rank files."""
        with open(self.predictions, "a") as fh:
            P.append_records(fh, list(records))
        for part in self._rank_files():
            part.unlink(missing_ok=True)

    def finish(self, order: Mapping[str, int]) -> dict[str, dict]:
        """Rewrite predictions.jsonl sorted by ``order`` (image id → position; others last); its records."""
        records = P.load_records(self.predictions).records
        ordered = sorted(records.values(), key=lambda r: order.get(r["image_id"], len(order)))
        P.write_records(self.predictions, ordered)
        return records

    def write_results(self, summary: dict) -> None:
        write_text_atomic(self.results, P.dumps(summary) + "\n")

    def read(self) -> RunContents:
        """The folder's config and predictions (:class:`RunError`, one line, when it is not a run folder)."""
        config = self.read_config()
        if not self.predictions.is_file():
            raise RunError(f"{self.path} holds no {PREDICTIONS} (the run has not finished an image)")
        loaded = P.load_records(self.predictions)
        return RunContents(
            self.path, config, loaded.records, loaded.dropped, sha256_file(self.config_file), sha256_file(self.predictions),
        )
