"""Typed events that travel from taps and trainers to the dashboard and the recorder.

Plain dataclasses of Python scalars and small numpy arrays. No JAX here: the dashboard
and `--attach` must run on a machine without it. Every event has a stable `kind` and
round-trips exactly through `encode_event` / `decode_event` (JSON-safe dicts: arrays as
short decimals or base64 of their bytes, non-finite floats as {"nf": ...}); the recorder
writes that dict as one JSON line. `decode_event` is the one way from a dict to an event:
the log readers, `LiveTUI.queue` and the store all use it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar, Optional

import numpy as np

from vlmrl.instrument import limits
from vlmrl.instrument.json_values import decode_value, encode_value

SCHEMA_VERSION = 1

# Names of the per layer x head attention statistics, in the order taps emit them.
# focus = 1 - H(row)/log(K) of the newest query row; max = largest weight; vision = share
# of the row on image tokens; sink = share on the first (sink) token.
ATTN_STATS = ("focus", "max", "vision", "sink")

# Rows of the update taps (UpdateStats), in the order the device packs them: per text
# layer x head, per layer MLP, per whole layer, per vision block, per patch merger (the
# final one, then DeepStack's), and the rest, named by UPDATE_OTHER_ROWS.
UPDATE_SEGMENTS = ("heads", "mlp", "layer", "vision", "merger", "other")
UPDATE_OTHER_ROWS = ("embed", "vision in", "rest")


@dataclasses.dataclass
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        """The JSON-safe dict of this event (`encode_event`)."""
        return encode_event(self)


@dataclasses.dataclass
class RunInfo(Event):
    kind: ClassVar[str] = "run_info"
    model_name: str = "qwen3vl"
    num_layers: int = 28
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    max_cache: int = 2048
    batch: int = 1
    vision_depth: int = 0
    deepstack_layers: tuple = ()  # the LLM layers whose output gets DeepStack features added (0, 1, 2)
    device_kind: str = "cpu"
    device_memory_in_use: Optional[int] = None
    device_memory_limit: Optional[int] = None
    # "device": the backend's memory_stats(); "host": the process's resident memory of the
    # machine's (backends that report none, e.g. CPU).
    memory_source: str = "device"
    # Floating dtype(s) of the weights as held ("float32", "bfloat16"); `dtype` is the KV cache's.
    weights_dtype: str = ""
    process_index: int = 0
    process_count: int = 1
    # Devices of the whole run (all processes) and their mesh (data, fsdp, tensor); () for a
    # writer that predates meshes.
    device_count: int = 1
    mesh_shape: tuple = ()
    # Bytes in use / limit of each local device, in device order, from each device's own
    # memory_stats(); () where the backend reports none (CPU). device_memory_in_use above is
    # the first device's (or the host's, by memory_source).
    devices_memory_in_use: tuple = ()
    devices_memory_limit: tuple = ()
    # What the run is doing when no step has finished yet ("compiling ..."); "" when training.
    status: str = ""
    # How long the status has lasted, in seconds: a run republishes RunInfo while it compiles.
    status_seconds: Optional[float] = None
    wall_time: float = dataclasses.field(default_factory=time.time)

    def kv_bytes_per_token(self, batch: Optional[int] = None) -> int:
        """Bytes of K and V one cached token costs across all layers (whole batch)."""
        itemsize = np.dtype(_np_dtype_name(self.dtype)).itemsize
        b = self.batch if batch is None else batch
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize * b


def _np_dtype_name(name: str) -> str:
    # numpy has no bfloat16; it has the same size as float16.
    return "float16" if name in ("bfloat16", "bf16") else name


@dataclasses.dataclass
class DecodeState(Event):
    kind: ClassVar[str] = "decode"
    step: int = 0
    token_id: int = 0
    token_text: str = ""
    token_prob: float = 0.0
    cache_len: int = 0
    cache_max: int = 0
    active_layer: int = 0
    active_head: int = 0
    mrope_t: int = 0
    mrope_h: int = 0
    mrope_w: int = 0
    # float32 [num_layers, num_heads] in [0, 1]: the focus statistic (see ATTN_STATS).
    attention_pattern: Optional[np.ndarray] = None
    seq_index: int = 0
    # Which generate() call this step belongs to: step keys restart at 0 on every call.
    generation: int = 0
    batch_size: int = 1
    logprob: float = 0.0
    entropy: float = 0.0
    # [(token_id, token_text, prob), ...] best first, the sampled token possibly among them.
    top_k: list = dataclasses.field(default_factory=list)
    # {stat name: float32 [num_layers, num_heads]} for every name in ATTN_STATS that was taken.
    attn_stats: dict = dataclasses.field(default_factory=dict)
    # (start, end) of the image tokens in the sequence, end exclusive; None when text only.
    vision_span: Optional[tuple] = None
    # grid (t, h, w) of the image in vision_span, in patches before merging.
    vision_grid: Optional[tuple] = None
    kv_bytes: Optional[int] = None
    # float32 [K]: the newest query's attention over the K key slots, mean over layers and
    # heads (only when the tap asks for it; feeds the token attention explorer).
    attention_row: Optional[np.ndarray] = None
    phase: str = "decode"  # "prefill" | "decode"
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class TrainingState(Event):
    kind: ClassVar[str] = "training"
    step: int = 0
    reward_mean: float = 0.0
    reward_std: float = 0.0
    kl: float = 0.0
    loss: float = 0.0
    tokens_per_sec: float = 0.0
    gpu_util: Optional[float] = None
    policy_entropy: Optional[float] = None
    clip_fraction: Optional[float] = None
    grad_norm: Optional[float] = None
    learning_rate: Optional[float] = None
    update_tokens_per_sec: Optional[float] = None
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class CreditState(Event):
    kind: ClassVar[str] = "credit"
    tokens: list = dataclasses.field(default_factory=list)
    credits: list = dataclasses.field(default_factory=list)
    step: int = 0
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class AttentionMatrix(Event):
    kind: ClassVar[str] = "attention_matrix"
    layer: Optional[int] = 0  # None: mean over layers
    head: Optional[int] = None  # None: mean over heads
    query_tokens: list = dataclasses.field(default_factory=list)
    key_tokens: list = dataclasses.field(default_factory=list)
    # per key token: "text" | "vision" | "special"
    token_types: list = dataclasses.field(default_factory=list)
    matrix: Optional[np.ndarray] = None  # float16/32 [q, k]
    # query/key token index range each pooled row/column covers, when pooled on device.
    pool: int = 1
    sliding_window: Optional[int] = None
    step: int = 0
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class RunEnd(Event):
    """The last record of a run, so a viewer of its log can say "finished" and stop waiting."""

    kind: ClassVar[str] = "run_end"
    step: Optional[int] = None  # the last update that finished; None when none did
    reason: str = "finished"  # "finished" (all steps) | "stopped" (asked to) | "interrupted" | "failed"
    seconds: float = 0.0  # wall time from the start of the run to this record
    wall_time: float = dataclasses.field(default_factory=time.time)


# Per-token metrics of a GroupState, in the order the group view cycles them:
# logprob = log pi_old(token) under the policy that sampled it; entropy = of that policy's
# next-token distribution; kl = k3 estimate of KL(pi_old || pi_ref) at that token;
# credit = (d loss / d logp) * logp (see core.ppo.token_credit); ratio = pi_new / pi_old,
# the same token's probability after the update over before it.
GROUP_METRICS = ("logprob", "entropy", "kl", "credit", "ratio")
# Bounds of one GroupState, so an update's event stays small (a real run's rollout of
# 64 rows x 512 tokens would be 650 KB of floats): at most GROUP_MAX_ROWS samples and
# GROUP_MAX_CELLS token cells in all (each completion keeps its first
# GROUP_MAX_CELLS // rows tokens; `lengths` keeps the full count). 2048 cells x 5 metrics
# x 4 bytes = 40 KB at most.
GROUP_MAX_ROWS = 64
GROUP_MAX_CELLS = 2048


@dataclasses.dataclass
class GroupState(Event):
    """One update's rollout groups: every sample of every prompt, with per-token arrays.

    Rows of one prompt are adjacent (`group` of them, as the trainer samples them), so
    prompt p owns rows p*group .. p*group+group-1. R = len(texts), T = tokens kept per row.
    """

    kind: ClassVar[str] = "group"
    step: int = 0
    group: int = 1  # samples per prompt
    prompts: list = dataclasses.field(default_factory=list)  # per prompt: the question
    answers: list = dataclasses.field(default_factory=list)  # per prompt: the answer that earns reward
    texts: list = dataclasses.field(default_factory=list)  # per row: the completion as scored
    tokens: list = dataclasses.field(default_factory=list)  # per row: its first <= T token texts
    lengths: Optional[np.ndarray] = None  # int32 [R]: tokens in the whole completion
    rewards: Optional[np.ndarray] = None  # float32 [R]
    advantages: Optional[np.ndarray] = None  # float32 [R]
    # {name in GROUP_METRICS: float32 [R, T]}, NaN past a row's tokens
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MemoryPlan(Event):
    """The memory planner's figures for this run (`vlmrl.plan`), bytes per device, beside
    the bytes of the arrays the run holds (`held_*`, None when not read). The dashboard's
    plan view (key k) shows them with what the run measures (KV cache, device memory)."""

    kind: ClassVar[str] = "memory_plan"
    model_name: str = ""
    dtype: str = ""
    optimizer_dtype: str = ""
    mesh: str = ""
    rows: int = 0  # batch x group
    cache_slots: int = 0  # prompt + completion slots of one row
    weights_bytes: int = 0
    reference_bytes: int = 0
    optimizer_bytes: int = 0
    grads_bytes: int = 0
    kv_bytes: int = 0  # contiguous reservation
    kv_bytes_paged: int = 0  # 16-token pages for the planned completion lengths
    activation_bytes: int = 0  # the update's activations
    attention_scores_bytes: int = 0  # score matrices a fused attention would not materialise
    rollout_bytes: int = 0  # phase figures on top of the resident state
    score_bytes: int = 0
    update_bytes: int = 0
    resident_bytes: int = 0  # weights + reference + optimizer
    per_device_bytes: int = 0  # the planned peak
    peak_phase: str = ""
    held_weights_bytes: Optional[int] = None
    held_reference_bytes: Optional[int] = None
    held_optimizer_bytes: Optional[int] = None
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class UpdateStats(Event):
    """What one PPO update did to each part of the model (the update taps, once per update).

    ratio = ||Δw|| / ||w||: the realised parameter change of a step over the weights before
    the update; grad = ||g|| before clipping. Both are root-mean-squares over the update's
    optimizer steps (exact when an update is one step). A head's row holds its q and o slices and
    the k and v slices of the kv head it reads. NaN where a row has no weight (||w|| = 0).
    """

    kind: ClassVar[str] = "update_stats"
    step: int = 0
    optimizer_steps: int = 1
    grad_norm: float = 0.0  # global, before clipping: mean over the optimizer steps
    grad_norm_max: float = 0.0
    clip_factor: float = 1.0  # mean over the steps of min(1, max_grad_norm / grad_norm)
    head_grad: Optional[np.ndarray] = None  # float32 [num_layers, num_heads]
    head_ratio: Optional[np.ndarray] = None
    mlp_grad: Optional[np.ndarray] = None  # float32 [num_layers]
    mlp_ratio: Optional[np.ndarray] = None
    layer_grad: Optional[np.ndarray] = None  # float32 [num_layers]: the whole decoder layer
    layer_ratio: Optional[np.ndarray] = None
    vision_grad: Optional[np.ndarray] = None  # float32 [vision depth]: one row per block
    vision_ratio: Optional[np.ndarray] = None
    merger_grad: Optional[np.ndarray] = None  # float32 [1 + deepstack mergers]
    merger_ratio: Optional[np.ndarray] = None
    other_grad: Optional[np.ndarray] = None  # float32 [len(UPDATE_OTHER_ROWS)]
    other_ratio: Optional[np.ndarray] = None
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class ImageState(Event):
    """One image of the watched sample as the model saw it, downsampled on the host (limits.py);
    once per generation, before its steps. The image view (key v, docs/image_view.md) draws it."""

    kind: ClassVar[str] = "image"
    generation: int = 0
    seq_index: int = 0  # the watched batch row
    index: int = 0  # which of the row's images (0-based), in the order of their tokens
    count: int = 1  # images the row holds
    grid: tuple = (1, 1, 1)  # merged patch grid (t, h, w): one image token per cell, row-major
    size: tuple = (0, 0)  # (height, width) in pixels of the image the model saw
    pixels: Optional[np.ndarray] = None  # uint8 [h, w, 3], downsampled
    wall_time: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class ImageAttention(Event):
    """The newest query's attention on the watched row's image tokens at one emitted step, keyed
    by (generation, step): N cells, one a token, or merged patches pooled `pool` x `pool` (per
    frame, in token order, ceil at the edges) to fit the per-emit budget (`taps.image_slots`)."""

    kind: ClassVar[str] = "image_attention"
    generation: int = 0
    step: int = 0
    seq_index: int = 0
    phase: str = "decode"  # "prefill" (step 0) | "decode"
    token_id: int = 0  # the token this query produced
    token_text: str = ""
    tokens: int = 0  # image tokens the row holds (all its images, in order)
    pool: int = 1  # merged patches a cell covers per side
    # float16 [L, N]: per layer, the mean over heads of the weight on each cell (summed over its tokens)
    attention: Optional[np.ndarray] = None
    # float32 [L]: per layer, the mean over heads of the share on all the row's image tokens
    image_share: Optional[np.ndarray] = None
    wall_time: float = dataclasses.field(default_factory=time.time)


EVENT_TYPES = {cls.kind: cls for cls in (RunInfo, DecodeState, TrainingState, CreditState, AttentionMatrix, RunEnd,
                                         GroupState, MemoryPlan, UpdateStats, ImageState, ImageAttention)}


# ---------------------------------------------------------------- the codec

# Taps send the focus statistic twice (attention_pattern is attn_stats["focus"]): the dict
# holds it once and a reference, a fifth of a decode line at 28 layers x 16 heads.
_FOCUS_REF = {"ref": "attn_stats.focus"}


def _same_as_focus(event: Event) -> bool:
    pat = getattr(event, "attention_pattern", None)
    focus = (getattr(event, "attn_stats", None) or {}).get("focus")
    return (isinstance(pat, np.ndarray) and isinstance(focus, np.ndarray) and pat.dtype == focus.dtype
            and pat.shape == focus.shape and (pat is focus or np.array_equal(pat, focus, equal_nan=True)))


def encode_event(event: Event) -> dict:
    """The JSON-safe dict of an event ("kind" first, then every field)."""
    data = {"kind": event.kind}
    for f in dataclasses.fields(event):
        data[f.name] = encode_value(getattr(event, f.name))
    if _same_as_focus(event):
        data["attention_pattern"] = _FOCUS_REF
    return data


_TUPLE_FIELDS = ("vision_span", "vision_grid", "deepstack_layers", "mesh_shape", "devices_memory_in_use",
                 "devices_memory_limit", "grid", "size")


def decode_event(data: Any) -> Event:
    """Rebuild an event from `encode_event` output (a parsed log line or a queued dict).

    Fields the event type does not have are ignored (a newer writer); a value that is
    missing keeps its default. Raises ValueError naming the problem when `data` is not a
    valid event, so a caller can reject it whole.
    """
    if not isinstance(data, dict):
        raise ValueError(f"an event must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        kwargs = {k: decode_value(v) for k, v in data.items() if k in names}
    except (KeyError, TypeError, OverflowError, ValueError, RecursionError) as exc:
        raise ValueError(f"{kind}: bad encoded value ({type(exc).__name__}: {exc})") from None
    if kwargs.get("attention_pattern") == _FOCUS_REF:
        stats = kwargs.get("attn_stats")
        if not isinstance(stats, dict) or not isinstance(stats.get("focus"), np.ndarray):
            raise ValueError("attention_pattern refers to a missing attn_stats.focus")
        kwargs["attention_pattern"] = stats["focus"]
    for key in _TUPLE_FIELDS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if isinstance(kwargs.get("top_k"), list):
        kwargs["top_k"] = [tuple(t) if isinstance(t, list) else t for t in kwargs["top_k"]]
    event = cls(**kwargs)
    validate(event)
    return event


# ---------------------------------------------------------------- validation

_FIELD_CHECKS: dict = {}  # event class -> ((name, check), ...), built on first use


def _checks_of(cls) -> tuple:
    checks = _FIELD_CHECKS.get(cls)
    if checks is None:
        checks = _FIELD_CHECKS[cls] = tuple(
            (f.name, limits.check_for(cls.kind, f.name, str(f.type))) for f in dataclasses.fields(cls))
    return checks


def validate(event: Event) -> None:
    """Raise ValueError naming the first field of `event` outside its type or bounds
    (`limits.py`): such an event is rejected whole, before any of it is applied."""
    for name, check in _checks_of(type(event)):
        value = getattr(event, name)
        if not check(value):
            raise ValueError(f"{event.kind}.{name}: {limits.describe(value)} is not a valid value")

