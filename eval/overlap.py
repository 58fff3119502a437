"""One batch in flight: the device runs batch i+1's forward pass while the host finishes batch i.

``eval run``'s loop per batch is: forward pass (device), the method's proposals (LOST: a few small
device kernels, then connected components on the host), records written with fsync (host). Run in
that order, the GPU idles during the host part. :func:`overlapped` queues batch i+1's forward
pass first, then computes batch i's proposals on a side CUDA stream that waits only for batch i's
forward pass (an event), so copying LOST's results back does not wait for batch i+1's trunk.

Nothing about any one batch changes (same inputs, same kernels, same order of work within a
batch), so boxes are those of the plain loop; only when they are computed moves. On a CPU the
same code runs the plain sequence with the proposals one batch later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import torch

from .loader import Decoded

T = TypeVar("T")
P = TypeVar("P")


def overlapped(
    batches: Iterable[list[Decoded]],
    embed: Callable[[list[Decoded]], T],
    propose: Callable[[T], Sequence[P]],
    device: torch.device,
) -> Iterator[tuple[list[Decoded], Sequence[P]]]:
    """``(batch, proposals)`` for each batch, in order; ``proposals`` has one entry per readable
    image of the batch (``d.rgb is not None``), in order, and is empty for a batch of unreadable
    items (which is never embedded). ``embed`` gets the readable items of a batch; ``propose``
    what ``embed`` returned.

    A batch is yielded only after the batch before it, so a consumer that stops at an unreadable
    item has already been given every earlier batch.
    """
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    pending = None
    for batch in batches:
        good = [d for d in batch if d.rgb is not None]
        embedded = embed(good) if good else None
        ready = None
        if side is not None and embedded is not None:
            ready = torch.cuda.Event()
            ready.record()  # on the current stream, after this batch's forward pass
        if pending is not None:
            yield pending[0], _propose(propose, pending[1], pending[2], side)
        pending = (batch, embedded, ready)
    if pending is not None:
        yield pending[0], _propose(propose, pending[1], pending[2], side)


def _propose(propose, embedded, ready, side) -> Sequence:
    if embedded is None:
        return []
    if side is None:
        return propose(embedded)
    with torch.cuda.stream(side):
        side.wait_event(ready)
        proposals = propose(embedded)
    # the batch's tensors are freed into the main stream's pool: later work there must follow
    torch.cuda.current_stream(side.device).wait_stream(side)
    return proposals
