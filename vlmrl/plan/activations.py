"""Transient memory of the three phases of one RL update, per device (estimates).

What this implementation materialises, phase by phase (bytes in the run's dtype `b`
unless said otherwise; fp32 = 4):

- rollout prefill: the vision tower over every row's patches, then the decoder over the
  prompt; the forward returns logits for every prompt position ([rows, S, vocab]).
- scoring (old and reference log-probs): one forward over the whole rollout
  ([rows, S + N]), logits for every position plus fp32 log-softmax and its exp over the
  N completion positions.
- update (per minibatch): forward and backward; without remat every layer keeps its
  activations for the backward pass, with remat (jax.checkpoint per layer) only each
  layer's input plus one layer's working set.

Attention is not fused: scores (b) and fp32 probabilities ([heads, queries, keys]) are
materialised per layer. The vision tower attends over all patches of a call at once,
masked per image, so its score matrix is [heads, patches, patches] of the whole batch;
under batch sharding a device holds its own queries against every key. These score
matrices are what a fused (flash) kernel keeps in on-chip tiles instead: they are
reported as `attention_scores_bytes_avoided`.

XLA fuses elementwise work and reuses buffers, so these are estimates of the working
set, not exact figures; the tests compare them with XLA's own buffer assignment.
"""
from __future__ import annotations

from typing import Dict

from vlmrl.plan.counts import dtype_bytes
from vlmrl.plan.spec import Mesh, RunSpec

F32 = 4


def _text_token_bytes(spec: RunSpec, tensor: int) -> float:
    """Bytes one decoder layer keeps per token for its backward pass. In the run's dtype:
    layer input, both norms' outputs, the mid residual (4 H); q and k before/after norm and
    rope, v, the attention output (4 q + 4 kv widths); gate, up, activation, product (4 I).
    In fp32: the upcasts the RMSNorms keep (2 H + q + kv). Head and MLP parts are split by
    tensor parallelism, the residual stream is not."""
    t = spec.config.text
    b = dtype_bytes(spec.dtype)
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    return ((4 * t.hidden_size + (4 * q + 4 * kv + 4 * t.intermediate_size) / tensor) * b
            + (2 * t.hidden_size + (q + kv) / tensor) * F32)


def _vision_patch_bytes(spec: RunSpec, tensor: int) -> float:
    """Per patch per vision block: input, two norms, mid residual (4 D); qkv, roped q and k,
    attention output (6 D); fc1 output and its GELU (2 I); the fp32 rotary upcasts of q, k (2 D)."""
    v = spec.config.vision
    b = dtype_bytes(spec.dtype)
    return (4 * v.hidden_size + (6 * v.hidden_size + 2 * v.intermediate_size) / tensor) * b \
        + 2 * v.hidden_size / tensor * F32


# Bytes per attention score element ([heads, queries, keys]):
# forward only, XLA fuses mask, upcast and softmax around one fp32 matrix;
def _score_fwd(b: int) -> int:
    return F32


# kept for the backward pass: the masked fp32 scores and fp32 probabilities (plus the
# probabilities cast back when the run's dtype is narrower);
def _score_saved(b: int) -> int:
    return 2 * F32 + (b if b < F32 else 0)


# and in the backward pass of one layer: the gradients of probabilities and scores.
SCORE_BWD = 2 * F32


def _vision_scores(spec: RunSpec, here: float, call: float, tensor: int) -> float:
    """Score elements of one vision block: a device's patches against every patch of the
    call (or, with per-image attention, against the patches of their own image)."""
    if not spec.images:
        return 0.0
    keys = spec.patches_per_image if spec.vision_attention == "image" else call
    return spec.config.vision.num_heads / tensor * here * keys


def _text_scores(spec: RunSpec, rows_here: float, seq: int, tensor: int) -> float:
    return rows_here * spec.config.text.num_attention_heads / tensor * seq * seq


def _logits(spec: RunSpec, rows_here: float, seq: int, completion: int, mesh: Mesh) -> float:
    """Logits of every position in b, plus the fp32 copy of the completion's logits that the
    log-softmax reads (XLA fuses the log-softmax, its exp and the entropy into it)."""
    b, vocab = dtype_bytes(spec.dtype), spec.config.text.vocab_size
    return rows_here * (seq * vocab * b + completion * vocab * F32) / mesh.tensor


def _hidden(spec: RunSpec, rows_here: float, seq: int) -> float:
    """Hidden states plus the DeepStack features scattered to token positions."""
    t, v = spec.config.text, spec.config.vision
    return rows_here * seq * t.hidden_size * dtype_bytes(spec.dtype) * (2 + len(v.deepstack_visual_indexes))


def batch_bytes(spec: RunSpec, rows: float) -> float:
    """The rollout arrays the scorer and the update read: ids, attention mask, mRoPE
    positions (int32), pixel patches (fp32), completion mask, old/ref log-probs, advantages."""
    seq, n, pv = spec.seq_len, spec.max_new, spec.config.vision
    patch_dim = pv.in_channels * pv.temporal_patch_size * pv.patch_size ** 2
    per_row = (4 + 4 + 12) * seq + spec.images * spec.patches_per_image * patch_dim * F32 + n * (1 + 4 + 4) + 4
    return rows * per_row


def _forward_working(spec: RunSpec, rows_here: float, rows_call: int, seq: int, mesh: Mesh):
    """(bytes, score bytes) of the largest single step of a forward pass: one vision block,
    one decoder layer, or the logits."""
    b, t = dtype_bytes(spec.dtype), mesh.tensor
    here = rows_here * spec.images * spec.patches_per_image
    vis_scores = _vision_scores(spec, here, rows_call * spec.images * spec.patches_per_image, t) * _score_fwd(b)
    txt_scores = _text_scores(spec, rows_here, seq, t) * _score_fwd(b)
    vision = here * _vision_patch_bytes(spec, t) + vis_scores
    text = rows_here * seq * _text_token_bytes(spec, t) + txt_scores
    return max(vision, text), max(vis_scores, txt_scores)


def phases(spec: RunSpec, mesh: Mesh) -> Dict[str, Dict[str, float]]:
    """Per-device transient bytes of each phase, by component; 'scores' entries are the
    attention score matrices inside them (already counted in the other entries)."""
    shards, t = mesh.batch_shards, mesh.tensor
    rows_dev, mb_dev = spec.rows / shards, spec.mb_rows / shards
    S, seq, N = spec.prompt_len, spec.seq_len, spec.max_new
    b = dtype_bytes(spec.dtype)
    L, depth = spec.config.text.num_hidden_layers, spec.config.vision.depth
    vocab = spec.config.text.vocab_size

    # ---- rollout prefill (the decode steps after it are small beside it)
    work, scores = _forward_working(spec, rows_dev, spec.rows, S, mesh)
    rollout = {"prefill_hidden": _hidden(spec, rows_dev, S),
               "prefill_working": max(work, rows_dev * S * vocab * b / t), "scores": scores}

    # ---- scoring: forward over the whole rollout
    work, scores = _forward_working(spec, rows_dev, spec.rows, seq, mesh)
    score = {"batch": batch_bytes(spec, rows_dev), "hidden": _hidden(spec, rows_dev, seq),
             "working": max(work, _logits(spec, rows_dev, seq, N, mesh)), "scores": scores}

    # ---- update: one minibatch forward + backward
    here = mb_dev * spec.images * spec.patches_per_image
    vis_el = _vision_scores(spec, here, spec.mb_rows * spec.images * spec.patches_per_image, t)
    txt_el = _text_scores(spec, mb_dev, seq, t)
    vis_layer = here * _vision_patch_bytes(spec, t) + vis_el * _score_saved(b)
    txt_layer = mb_dev * seq * _text_token_bytes(spec, t) + txt_el * _score_saved(b)
    # the backward pass of one layer holds its score gradients
    backward = max(vis_el, txt_el) * SCORE_BWD
    if spec.remat:
        h, hv = spec.config.text.hidden_size, spec.config.vision.hidden_size
        saved = L * mb_dev * seq * h * b + depth * here * hv * b
        # the backward pass recomputes one layer (or one vision block) at a time
        saved += max(txt_layer, vis_layer)
        scores = max(txt_el, vis_el) * (_score_saved(b) + SCORE_BWD)
    else:
        saved = L * txt_layer + depth * vis_layer
        scores = (L * txt_el + depth * vis_el) * _score_saved(b) + max(vis_el, txt_el) * SCORE_BWD
    logits = _logits(spec, mb_dev, seq, N, mesh)
    logits_grad = mb_dev * seq * vocab * b / t  # d loss / d logits
    # the scanned update stacks every minibatch's rows next to the rollout arrays: two copies
    update = {"batch": 2 * batch_bytes(spec, rows_dev), "saved_activations": saved + logits,
              "backward": backward + logits_grad, "scores": scores}
    return {"rollout": rollout, "score": score, "update": update}


def activation_bytes(spec: RunSpec, mesh: Mesh) -> Dict[str, float]:
    """The update's activations (saved ones plus the backward pass's own) with and without remat."""
    plain = phases(spec.replace(remat=False), mesh)["update"]
    remat = phases(spec.replace(remat=True), mesh)["update"]
    return {"no_remat": plain["saved_activations"] + plain["backward"],
            "remat": remat["saved_activations"] + remat["backward"]}
