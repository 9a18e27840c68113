"""Numbers behind the token attention explorer: which input tokens fed each output token.

For generation step i the model's newest query produces output token i. Its attention
row (mean over layers and heads) covers the key slots [0, P + i): P prompt slots, then
the i outputs already generated. The explorer splits it in two and normalises each part
on its own (a sum of 1 + 1e-8), so a few strong prompt tokens do not flatten the
output-to-output links and vice versa. The first slot (BOS, or the attention-sink token
that stands in for it) is removed before normalising: it soaks up most attention and says
nothing about which tokens matter.

Inputs are numpy only: per step `DecodeState.attention_row` (float32 [K]) with the cache
length after that step, or one full [S, S] matrix (AttentionMatrix, mean over layers and
heads when layer and head are None).
"""
from __future__ import annotations

import collections
import dataclasses
import re
from types import MappingProxyType
from typing import Callable, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from vlmrl.utils.tui.canvas import text_memo

EPS = 1e-8
THRESHOLD_MIN, THRESHOLD_MAX, THRESHOLD_STEP = 0.0, 0.2, 0.001
DEFAULT_THRESHOLD = 0.05
CACHE_SIZE = 10

_SPECIAL = MappingProxyType({
    "<|begin_of_text|>": "[BOS]", "<s>": "[BOS]", "<bos>": "[BOS]", "[CLS]": "[BOS]",
    "<|end_of_text|>": "[EOS]", "</s>": "[EOS]", "<eos>": "[EOS]", "<|endoftext|>": "[EOS]",
    "<|im_end|>": "[EOS]", "<|eot_id|>": "[EOS]", "[SEP]": "[EOS]",
    "<unk>": "[UNK]", "[UNK]": "[UNK]", "<|unk|>": "[UNK]",
})
_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in sorted(_SPECIAL, key=len, reverse=True)))
_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Other chat-template markers (<|im_start|>, <|vision_start|>, <|image_pad|>) keep their
# name, bracketed like the rest, so they read as markers and not as text.
_MARKER_RE = re.compile(r"<\|([A-Za-z0-9_]{1,32})\|>")


@text_memo(maxsize=65536)
def _clean(label: str) -> str:
    label = label.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")
    # decoded text (not byte-level pieces) carries real newlines and tabs: show them too
    label = label.replace("\n", "\\n").replace("\t", "\\t")
    label = _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], label)
    label = _MARKER_RE.sub(lambda m: f"[{m.group(1)}]", label)
    label = _BYTE_RE.sub("", label)
    label = label.strip()
    return label if label else "[EMPTY]"


def clean_label(token) -> str:
    """A tokenizer piece as a readable label: Ġ/▁ -> space, Ċ -> \\n, byte tokens dropped,
    special tokens as [BOS]/[EOS]/[UNK], surrounding space stripped, empty as [EMPTY]."""
    return _clean(str(token))


def step_threshold(value: float, direction: int) -> float:
    """Move the threshold one 0.001 step up (+1) or down (-1), clamped to [0, 0.2]."""
    steps = int(round(value / THRESHOLD_STEP)) + int(direction)
    return round(min(max(steps * THRESHOLD_STEP, THRESHOLD_MIN), THRESHOLD_MAX), 3)


def normalise(part: np.ndarray) -> np.ndarray:
    part = np.asarray(part, dtype=np.float64)
    return (part / (part.sum() + EPS)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ExplorerData:
    """Processed attention of one generation, per emitted step (taps may emit every n-th step).

    steps[i]: the generation step of row i, i.e. the output token it produced.
    input_weights[i]: float32 [n_inputs] (first slot removed), sums to ~1 (or 0 when empty).
    output_weights[i]: float32 [steps[i]], weights on outputs 0..steps[i]-1.
    output_labels[j]: label of output j for every j up to the last step ("#j" if not seen).
    """

    input_labels: Tuple[str, ...]
    output_labels: Tuple[str, ...]
    input_weights: Tuple[np.ndarray, ...]
    output_weights: Tuple[np.ndarray, ...]
    steps: Tuple[int, ...] = ()
    dropped_first: bool = True

    @property
    def num_steps(self) -> int:
        return len(self.input_weights)


def split_row(row: np.ndarray, input_len: int, step: int, drop_first: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Separately normalised (inputs, earlier outputs) of one step's attention row.

    row: attention over key slots, slot j = sequence position j, at least input_len + step
    long (slots past that are the empty rest of the cache and are ignored).
    """
    row = np.asarray(row, dtype=np.float32).reshape(-1)
    if row.shape[0] < input_len + step:
        raise ValueError(f"attention row has {row.shape[0]} slots, step {step} needs {input_len + step}")
    start = 1 if drop_first and input_len > 0 else 0
    return normalise(row[start:input_len]), normalise(row[input_len:input_len + step])


def _labels(tokens: Optional[Sequence], n: int, prefix: str) -> Tuple[str, ...]:
    tokens = list(tokens or [])
    return tuple(clean_label(tokens[i]) if i < len(tokens) else f"{prefix}{i}" for i in range(n))


def from_rows(rows: Sequence[np.ndarray], input_len: int, input_tokens: Optional[Sequence] = None,
              output_tokens: Optional[Sequence] = None, drop_first: bool = True,
              steps: Optional[Sequence[int]] = None) -> ExplorerData:
    """Explorer data from per-step attention rows: rows[i] produced output steps[i]
    (default steps 0, 1, 2, ...) and output_tokens[i] is that output's text."""
    if input_len < 0:
        raise ValueError(f"input_len must be >= 0, got {input_len}")
    steps = list(range(len(rows))) if steps is None else [int(s) for s in steps]
    if len(steps) != len(rows) or any(s < 0 for s in steps) or steps != sorted(set(steps)):
        raise ValueError("steps must be distinct, increasing, non-negative and one per row")
    ins, outs = [], []
    for row, step in zip(rows, steps):
        a, b = split_row(row, input_len, step, drop_first)
        ins.append(a)
        outs.append(b)
    start = 1 if drop_first and input_len > 0 else 0
    in_labels = _labels(input_tokens, input_len, "in")[start:]
    known = dict(zip(steps, output_tokens or ()))
    n_out = steps[-1] + 1 if steps else 0
    out_labels = tuple(clean_label(known[j]) if j in known else f"#{j}" for j in range(n_out))
    return ExplorerData(in_labels, out_labels, tuple(ins), tuple(outs), tuple(steps), drop_first)


def from_matrix(matrix: np.ndarray, input_len: int, tokens: Optional[Sequence] = None,
                drop_first: bool = True) -> ExplorerData:
    """Explorer data from a full causal [S, S] attention matrix over prompt + outputs.

    Query row P-1+i is the one that produced output i (its token is sequence position P+i,
    which the matrix holds only as a query when it was fed back; the last output may not).
    """
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"attention matrix must be square [S, S], got shape {m.shape}")
    if not 0 < input_len <= m.shape[0]:
        raise ValueError(f"input_len {input_len} outside 1..{m.shape[0]}")
    n_steps = m.shape[0] - input_len + 1
    rows = [m[input_len - 1 + i] for i in range(n_steps)]
    tokens = list(tokens or [])
    return from_rows(rows, input_len, tokens[:input_len], tokens[input_len:], drop_first)


# --------------------------------------------------------------- connections

@dataclasses.dataclass(frozen=True)
class Edge:
    source: Tuple[str, int]  # ("in", i) or ("out", j)
    target: int  # output index
    weight: float


def edges(data: ExplorerData, index: int, threshold: float, selected: Optional[Tuple[str, int]] = None,
          show_all: bool = False) -> List[Edge]:
    """Connections at or above `threshold`, strongest first.

    `index` is a row (emitted step) of `data`. Default: the links into that row's output.
    show_all: into every output up to it. A selected token ("in", i) or ("out", j) keeps
    only its own links (into it and out of it) up to that row. Edge.target is a step number.
    """
    if data.num_steps == 0:
        return []
    index = max(0, min(index, data.num_steps - 1))
    rows = range(index + 1) if (show_all or selected is not None) else (index,)
    out = []
    for i in rows:
        t = data.steps[i]
        for k in np.flatnonzero(data.input_weights[i] >= threshold):
            out.append(Edge(("in", int(k)), t, float(data.input_weights[i][k])))
        for j in np.flatnonzero(data.output_weights[i] >= threshold):
            out.append(Edge(("out", int(j)), t, float(data.output_weights[i][j])))
    if selected is not None:
        out = [e for e in out if e.source == selected or (selected[0] == "out" and e.target == selected[1])]
    out.sort(key=lambda e: -e.weight)
    return out


# --------------------------------------------------------------- cache

class LRUCache:
    """Processed explorer data keyed by (prompt, length): re-processing every frame would
    cost O(steps x cache) per frame; the key changes only when a new step arrives."""

    def __init__(self, maxsize: int = CACHE_SIZE):
        self.maxsize = maxsize
        self._items: "collections.OrderedDict[Hashable, ExplorerData]" = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], ExplorerData]) -> ExplorerData:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = compute()
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
