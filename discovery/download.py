"""Resumable, checksum-verified HTTP(S) downloads: the one way the toolkit fetches a file.

:func:`download` writes ``DEST.part`` and resumes it with a ``Range`` request after an
interruption (within the call, up to ``retries`` times, and on the next call). The finished file
is hashed, and only a file whose digest matches is renamed to ``DEST``: nothing unverified ever
sits at ``DEST``, so a caller may unpack or load ``DEST`` as soon as it exists.

``DISCOVERY_OFFLINE=1`` (:func:`offline`, also ``discovery.weights.offline``) refuses every download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .files import fsync_folder

ALGORITHMS = ("md5", "sha256")
CHUNK = 1 << 20


class DownloadError(OSError):
    """A download that failed or was refused; ``str(err)`` is one line. An ``OSError``, so every
    CLI reports it as a user error (``discovery.cli.USER_ERRORS``)."""


@dataclass(frozen=True)
class Checksum:
    """What a file's digest must be.

    Attributes:
        algorithm: ``md5`` or ``sha256``.
        digest: lowercase hex; the full digest, or a leading prefix (at least 8 digits), as the
            weights file names carry (``resnet50-0676ba61.pth``).
    """

    algorithm: str
    digest: str

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"checksum algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        full = hashlib.new(self.algorithm).digest_size * 2
        if not (8 <= len(self.digest) <= full) or any(c not in "0123456789abcdef" for c in self.digest):
            raise ValueError(f"{self.algorithm} checksum must be 8 to {full} lowercase hex digits, not {self.digest!r}")

    def matches(self, digest: str) -> bool:
        return digest.lower().startswith(self.digest)

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest}"


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file (``md5`` or ``sha256``), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, checksum: Checksum | None, source: str) -> None:
    """Raise :class:`DownloadError` when ``path`` does not match ``checksum`` (``None``: nothing
    to check). ``source`` names the file's origin in the message."""
    if checksum is None:
        return
    actual = file_digest(path, checksum.algorithm)
    if not checksum.matches(actual):
        shown = actual[: max(len(checksum.digest), 8)]
        raise DownloadError(
            f"{source}: {checksum.algorithm} {shown} does not match the expected {checksum.digest}; refused"
        )


def offline() -> bool:
    """Whether downloads are switched off (``DISCOVERY_OFFLINE`` set to anything but ``0``)."""
    return os.environ.get("DISCOVERY_OFFLINE", "") not in ("", "0")


def download(
    url: str,
    dest: str | Path,
    checksum: Checksum | None = None,
    *,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` where a former try stopped.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: the final file. An existing ``dest`` that matches ``checksum`` (any, when
            ``checksum`` is ``None``) is kept as it is; one that does not is replaced once a
            verified download is complete.
        checksum: the digest the file must have before it is renamed to ``dest``; ``None``
            checks nothing beyond the length the server announced.
        timeout: seconds a connect or a read may block.
        retries: how many times an interrupted transfer is resumed within this call.
        progress: draw a byte progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        DownloadError: downloads are off, the network or the server failed (the ``.part`` file is
            kept, so a later call resumes), or the finished file fails its checksum (the
            ``.part`` file is deleted: resuming it could never fix it).
    """
    dest = Path(dest)
    if dest.is_file() and (checksum is None or checksum.matches(file_digest(dest, checksum.algorithm))):
        return dest
    if offline():
        raise DownloadError(f"downloads are off (DISCOVERY_OFFLINE); cannot fetch {url}")
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// addresses are supported")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    kept_old_bytes = _fetch_part(url, part, timeout, retries, progress)
    try:
        verify_file(part, checksum, url)
    except DownloadError:
        part.unlink(missing_ok=True)
        if not kept_old_bytes:
            raise
        # the .part left by an earlier try may hold another file or bad bytes: start over once
        _fetch_part(url, part, timeout, retries, progress)
        try:
            verify_file(part, checksum, url)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    fsync_folder(dest.parent)
    return dest


def _fetch_part(url: str, part: Path, timeout: float, retries: int, progress: bool) -> bool:
    """Complete ``part``, resuming up to ``retries`` times, waiting 0, 1, 2... s before each.
    Returns whether ``part`` still holds bytes written before this call."""
    kept_old_bytes = part.exists() and part.stat().st_size > 0
    for attempt in range(retries + 1):
        if attempt > 1:
            time.sleep(attempt - 1)
        try:
            discarded = _transfer(url, part, timeout, progress)
            return kept_old_bytes and not discarded
        except _Interrupted as err:
            reason = str(err)
            kept_old_bytes = kept_old_bytes and not err.discarded
    kept = part.stat().st_size if part.exists() else 0
    raise DownloadError(f"download of {url} failed ({reason}); {kept} bytes kept in {part}, run again to resume")


class _Interrupted(Exception):
    """A transfer that stopped early but may be resumed; ``discarded``: whether it had thrown
    away the bytes that were in the ``.part`` file before it started."""

    def __init__(self, reason: str, discarded: bool = False):
        super().__init__(reason)
        self.discarded = discarded


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = getattr(err, "reason", None)
    text = str(reason if reason is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> bool:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server ignores ``Range``).
    Returns whether bytes that were in ``part`` were thrown away."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return False  # nothing left past our offset: the .part is whole (the checksum decides)
        if err.code >= 500 or err.code == 408:
            raise _Interrupted(_reason(err)) from None
        raise DownloadError(f"download of {url} failed ({_reason(err)})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Interrupted(_reason(err)) from None
    with response:
        resumed = response.status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset
        discarded = bool(offset) and not resumed
        if not resumed:
            offset = 0  # a 200 answer to a Range request is the whole file again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, disable=not progress, desc=part.name[:-5],
        ) as bar:
            try:
                while block := response.read(CHUNK):
                    fh.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(_reason(err), discarded) from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes", discarded)
    return discarded
