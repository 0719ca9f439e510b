"""The training stream's shuffle buffer: webdataset's ``shuffle`` algorithm with a state that can be saved.

The statistics are webdataset's: while the buffer holds fewer than ``size`` samples, two samples go in
for each one out; nothing comes out before it holds ``initial``; each output is a uniformly drawn
member (swapped with the last and popped); at the end of a finite stream the rest drains in random
order. ``state`` gives the buffer as the members' positions (their ``__pos__``, never their
contents) and the generator's state, plain ints and tuples; a buffer rebuilt from those positions
(``vlp.data.sources.PositionedReader.restore``) with ``restored=`` continues with exactly the
outputs the saved one would have given.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

Sample = Dict[str, Any]


class ShuffleBuffer:
    """A pipeline stage that shuffles samples in a buffer of ``size`` (``initial`` before the first
    output), drawing from ``rng``; one instance serves one pass of one reader."""

    def __init__(self, size: int, initial: int, rng: random.Random) -> None:
        if size < 1:
            raise ValueError(f"shuffle buffer size must be >= 1, got {size}")
        self.size, self.initial, self.rng = size, min(initial, size), rng
        self.buffer: List[Sample] = []

    def __call__(self, samples: Iterable[Sample], restored: Sequence[Sample] = ()) -> Iterator[Sample]:
        """The shuffled stream of ``samples``; ``restored``: the members a saved buffer held, in order."""
        samples = iter(samples)
        buf = self.buffer = list(restored)
        rng, size, initial = self.rng, self.size, self.initial
        for sample in samples:
            buf.append(sample)
            if len(buf) < size:
                extra = next(samples, None)
                if extra is not None:
                    buf.append(extra)
            if len(buf) >= initial:
                yield _pick(buf, rng)
        while buf:
            yield _pick(buf, rng)

    def state(self) -> Tuple[List[Tuple[int, int]], Tuple[Any, ...]]:
        """(the members' positions in buffer order, the generator's state) as plain tuples."""
        return [s["__pos__"] for s in self.buffer], self.rng.getstate()

    def set_rng_state(self, state: Sequence[Any]) -> None:
        """Put the generator back to a state from ``state`` (lists, as a checkpoint may give, are fine)."""
        version, internal, gauss = state
        self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))


def _pick(buf: List[Sample], rng: random.Random) -> Sample:
    """Remove and return a uniformly drawn member (swap with the last, pop), as webdataset does."""
    k = rng.randint(0, len(buf) - 1)
    sample = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return sample


def shuffle_rng(seed: int, rank: int, reader: int) -> random.Random:
    """The shuffle generator of one logical reader of one rank."""
    return random.Random(seed + 7919 * (rank + 1) + 104_729 * reader)
