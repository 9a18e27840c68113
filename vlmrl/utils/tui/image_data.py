"""The image view's state: the watched sample's images and its attention on them, bounded.

`ImageLog` is the Store's reducer for ImageState / ImageAttention events (the Store hands
them over and snapshots `view()`). It keeps the newest generation: its images and, keyed by
step, the attention of each emitted step (the last write per step wins: taps may duplicate
or reorder callbacks), and per generation the image share of its first token for the
learning curve. A generation's images come before its first step, so until that step
arrives the view keeps showing the generation before it (a live view would otherwise blink
"no attention yet" between generations). A late event of an older generation is counted,
never mixed in.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from vlmrl.instrument.events import ImageAttention, ImageState
from vlmrl.utils.tui.state import insert_by_step

MAX_STEPS = 512  # attention steps kept of the shown generation (28 x 576 float16 = 32 KB each at most)
MAX_HISTORY = 1024  # generations in the first-token share curve


class SharePoint(NamedTuple):
    generation: int
    step: int  # the first step seen of that generation (0: the prefill)
    share: float  # mean over layers of the share on the image


class ImageSnapshot(NamedTuple):
    """What the image view reads; never mutated."""

    generation: int = -1
    images: Tuple[ImageState, ...] = ()  # by index (those that came)
    steps: Tuple[ImageAttention, ...] = ()  # by step
    history: Tuple[SharePoint, ...] = ()
    stale: int = 0  # events of an older generation that came after a newer one
    version: int = 0


def check(ev) -> Optional[str]:
    """Why an image event does not hang together (None when it does); fields are already in bounds."""
    if isinstance(ev, ImageState):
        if ev.index >= ev.count:
            return f"image {ev.index} of {ev.count}"
        return None
    att, share = ev.attention, ev.image_share
    if att is None or share is None:
        return "image attention without its arrays"
    if att.shape[0] != share.shape[0]:
        return f"image attention of {att.shape[0]} layers with a share of {share.shape[0]}"
    if att.shape[1] > ev.tokens:
        return f"image attention over {att.shape[1]} tokens of a row with {ev.tokens}"
    return None


class ImageLog:
    """Reducer for the image events (see the module docstring)."""

    def __init__(self) -> None:
        self.generation = -1
        self.images: dict = {}
        self.steps: List[ImageAttention] = []
        self.before: Optional[tuple] = None  # (generation, images, steps) of the last one with steps
        self.history: List[SharePoint] = []
        self.stale = 0
        self.v = 0
        self._snap: Optional[ImageSnapshot] = None

    def apply(self, ev) -> Optional[str]:
        """Fold in one validated image event; returns a problem to report, or None."""
        problem = check(ev)
        if problem is not None:
            return problem
        if ev.generation < self.generation:
            self.stale += 1
            self.v += 1
            return None
        if ev.generation > self.generation:
            if self.steps:
                self.before = (self.generation, self.images, self.steps)
            self.generation, self.images, self.steps = ev.generation, {}, []
        if isinstance(ev, ImageState):
            self.images[ev.index] = ev
        else:
            insert_by_step(self.steps, ev, MAX_STEPS)
            self._note_share(ev)
        self.v += 1
        return None

    def _note_share(self, ev: ImageAttention) -> None:
        share = float(np.mean(ev.image_share, dtype=np.float64))
        point = SharePoint(int(ev.generation), int(ev.step), share)
        last = self.history[-1] if self.history else None
        if last is None or last.generation < ev.generation:
            self.history.append(point)
            del self.history[:-MAX_HISTORY]
        elif last.generation == ev.generation and ev.step <= last.step:
            self.history[-1] = point  # an earlier step of the same generation (callbacks reorder)

    def view(self) -> ImageSnapshot:
        if self._snap is None or self._snap.version != self.v:
            gen, images, steps = (self.generation, self.images, self.steps)
            if not steps and self.before is not None:
                gen, images, steps = self.before
            self._snap = ImageSnapshot(gen, tuple(images[i] for i in sorted(images)), tuple(steps),
                                       tuple(self.history), self.stale, self.v)
        return self._snap

    def copy(self) -> "ImageLog":
        out = ImageLog()
        out.generation, out.images, out.steps = self.generation, dict(self.images), list(self.steps)
        out.before = self.before  # never mutated: a new generation replaces it whole
        out.history, out.stale, out.v = list(self.history), self.stale, self.v
        return out
