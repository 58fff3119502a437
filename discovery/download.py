"""Resumable, checksum-verified HTTP(S) downloads: the one way the toolkit fetches a file.

:func:`download` writes ``DEST.part`` and resumes it with a ``Range`` request after an
interruption (within the call, up to ``retries`` times, and on the next call). The finished file
is hashed, and only a file whose digest matches is renamed to ``DEST``: nothing unverified ever
sits at ``DEST``, so a caller may unpack or load ``DEST`` as soon as it exists.

``DISCOVERY_OFFLINE=1`` (:func:`offline`, also ``discovery.weights.offline``) refuses every download.

Time-out (:func:`download_timeout`: the ``timeout`` argument, else ``$DISCOVERY_DOWNLOAD_TIMEOUT``,
else 30 s): a call gives up once that many seconds pass without a byte of the file arriving,
counted across all its tries. Each wait of a try (connect, a proxy's or the server's answer, each
read) is limited to the time left, and a try is started only while time is left, so a silent
server, proxy or firewall ends the call after about ``timeout`` seconds; every block of the file
that arrives restarts the count, so a slow download that keeps moving may take as long as it needs.
A name lookup (DNS) is bounded by the system resolver, not by this setting; a failed one is not retried.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .files import fsync_folder

ALGORITHMS = ("md5", "sha256")
CHUNK = 1 << 20
TIMEOUT_ENV = "DISCOVERY_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
TIMEOUT_HELP = (
    f"give a download up after this many seconds without receiving any of the file, retries "
    f"included (default ${TIMEOUT_ENV}, else {DEFAULT_TIMEOUT:g})"
)


class DownloadError(OSError):
    """A download that failed or was refused; ``str(err)`` is one line. An ``OSError``, so every
    CLI reports it as a user error (one ``error:`` line).

    Attributes:
        reason: why, in a few words (``nothing received for 30 s``, ``HTTP 404 Not Found``...), for
            callers that word their own message.
        kept: the ``.part`` file a later call resumes, when one is left and holds bytes.
    """

    def __init__(self, message: str, reason: str | None = None, kept: Path | None = None):
        super().__init__(message)
        self.reason = reason or message
        self.kept = kept


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
        reason = f"{checksum.algorithm} {shown} does not match the expected {checksum.digest}; refused"
        raise DownloadError(f"{source}: {reason}", reason)


def offline() -> bool:
    """Whether downloads are switched off (``DISCOVERY_OFFLINE`` set to anything but ``0``)."""
    return os.environ.get("DISCOVERY_OFFLINE", "") not in ("", "0")


def download_timeout(timeout: float | None = None) -> float:
    """``timeout`` when given, else ``$DISCOVERY_DOWNLOAD_TIMEOUT``, else 30 (seconds)."""
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "")
        try:
            timeout = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            timeout = float("nan")
        if not timeout > 0:
            raise DownloadError(f"{TIMEOUT_ENV} must be a number of seconds above 0, not {text!r}")
    return timeout


def download(
    url: str,
    dest: str | Path,
    checksum: Checksum | None = None,
    *,
    timeout: float | None = None,
    retries: int = 3,
    progress: bool = False,
    label: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` where a former try stopped.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: the final file. An existing ``dest`` that matches ``checksum`` (any, when
            ``checksum`` is ``None``) is kept as it is; one that does not is replaced once a
            verified download is complete.
        checksum: the digest the file must have before it is renamed to ``dest``; ``None``
            checks nothing beyond the length the server announced.
        timeout: seconds without receiving any of the file after which the call gives up,
            retries included (``None``: :func:`download_timeout`).
        retries: how many times an interrupted transfer is resumed within this call, while
            ``timeout`` allows.
        progress: draw a byte progress bar on stderr.
        label: how the one line printed on stderr before the first try names the file
            (default: ``dest``'s name).

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
    timeout = download_timeout(timeout)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"fetching {label or dest.name} from {url} (time-out {timeout:g} s; DISCOVERY_OFFLINE=1 skips downloads)",
          file=sys.stderr, flush=True)
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
    """Complete ``part``, resuming up to ``retries`` times, waiting 0, 1, 2... s before each, while
    ``timeout`` allows (:class:`_Budget`) and the failure may pass (not a 4xx answer, not a failed
    name lookup). Returns whether ``part`` still holds bytes written before this call."""
    kept_old_bytes = part.exists() and part.stat().st_size > 0
    budget = _Budget(timeout)
    for attempt in range(retries + 1):
        pause = max(attempt - 1, 0)
        if attempt and budget.left() <= pause:
            break
        time.sleep(pause)
        try:
            discarded = _transfer(url, part, budget, progress)
            return kept_old_bytes and not discarded
        except _Interrupted as err:
            reason = str(err)
            kept_old_bytes = kept_old_bytes and not err.discarded
            if err.final:
                break
    kept = part if part.exists() and part.stat().st_size else None
    resume = f"; {kept.stat().st_size} bytes kept in {kept}, run again to resume" if kept else ""
    raise DownloadError(f"download of {url} failed ({reason}){resume}", reason, kept)


class _Budget:
    """The time-out of one :func:`download` call: ``seconds`` without receiving file bytes,
    counted across its tries; :meth:`moved` restarts the count."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.moved()

    def moved(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class _Interrupted(Exception):
    """A transfer that stopped early; ``discarded``: whether it had thrown away the bytes that were
    in the ``.part`` file before it started; ``final``: whether trying again in this call is futile."""

    def __init__(self, reason: str, discarded: bool = False, final: bool = False):
        super().__init__(reason)
        self.discarded, self.final = discarded, final


def _reason(err: BaseException, budget: _Budget) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = getattr(err, "reason", None)
    if isinstance(err, TimeoutError) or isinstance(reason, TimeoutError):
        return f"nothing received for {budget.seconds:g} s"
    text = str(reason if reason is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _transfer(url: str, part: Path, budget: _Budget, progress: bool) -> bool:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server ignores ``Range``).
    Returns whether bytes that were in ``part`` were thrown away."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=max(budget.left(), 0.01))
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return False  # nothing left past our offset: the .part is whole (the checksum decides)
        raise _Interrupted(_reason(err, budget), final=err.code < 500 and err.code != 408) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # a failed name lookup fails the same way a second later: not retried
        lookup_failed = isinstance(getattr(err, "reason", err), socket.gaierror)
        raise _Interrupted(_reason(err, budget), final=lookup_failed) from None
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
                while block := response.read1(CHUNK):
                    fh.write(block)
                    budget.moved()
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(_reason(err, budget), discarded) from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes", discarded)
    return discarded
