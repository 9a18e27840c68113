"""The taps' host callback: jax.debug.callback's semantics at a fraction of its cost.

Kept apart from `taps.py` because it reaches into JAX internals; everything here falls
back to the public `jax.debug.callback` when those internals are not what we expect:
the primitive is built and then proven at import on a one-element probe (jit, lower,
run, the callback sees the value). Any failure there, not only an import error, selects
the documented path; `FALLBACK_REASON` says why (None when the fast path is in use).
`VLMRL_TAP_CALLBACK=debug` selects the documented path on purpose.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional, Tuple

import jax
import numpy as np


def _make_tap_primitive():
    """`tap_callback`: jax.debug.callback's unordered effect and lowering, minus its runtime cost.

    jax.debug.callback's runtime wrapper device_puts every operand back into a jax.Array
    before calling Python: measured ~170 us per call on CPU, against ~5 us for the raw host
    callback underneath it (XLA hands over numpy views of its buffers). This primitive
    lowers straight to that raw callback on one device; under any multi-device lowering it
    defers to jax.debug.callback's own lowering (gather to device 0, MAXIMAL sharding). It
    uses JAX internals, so any import failure falls back to plain jax.debug.callback.
    """
    from jax._src import callback as cb
    from jax._src import debugging as dbg
    from jax._src import sharding_impls
    from jax._src.interpreters import ad, batching, mlir
    from jax.extend import core as jcore

    prim = jcore.Primitive("tap_callback")
    prim.multiple_results = True

    def impl(*args, callback):  # eager (un-jitted) use: plain numpy, like the lowered path
        callback(*(np.asarray(a) for a in args))
        return []

    def lowering(ctx, *args, callback):
        axis = ctx.module_context.axis_context
        if not (isinstance(axis, sharding_impls.ShardingContext) and axis.num_devices == 1):
            return dbg.debug_callback_lowering(ctx, *args, effect=dbg.debug_effect, partitioned=False,
                                               callback=lambda *a: (callback(*a), ())[1])

        def raw(*a):
            callback(*a)
            return ()

        out, _, _ = cb.emit_python_callback(ctx, raw, None, list(args), ctx.avals_in, ctx.avals_out,
                                            has_side_effect=True, returns_token=True)
        return out

    prim.def_impl(impl)
    prim.def_effectful_abstract_eval(lambda *avals, callback: ([], {dbg.debug_effect}))
    mlir.register_lowering(prim, lowering)
    batching.primitive_batchers[prim] = functools.partial(dbg.debug_batching_rule, primitive=prim)
    ad.primitive_jvps[prim] = lambda primals, tangents, **kw: (prim.bind(*primals, **kw), [])
    ad.primitive_transposes[prim] = lambda _, *args, **kw: [None] * len(args)
    return prim


def probe(prim) -> Optional[str]:
    """Why `prim` cannot carry the taps (None: it can): a jitted one-element emit must
    lower, run and hand the callback the value."""
    seen = []
    marker = np.asarray([7.0], np.float32)

    def body(x):
        prim.bind(x, callback=_Unflatten(lambda a: seen.append(np.array(a)), jax.tree_util.tree_structure(x)))
        return x + 1

    try:
        jax.block_until_ready(jax.jit(body)(marker))
        jax.effects_barrier()
    except Exception as exc:  # a lowering or runtime failure of JAX internals we rely on
        return f"probe failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    if len(seen) != 1 or not np.array_equal(seen[0], marker):
        return f"probe delivered {len(seen)} call(s) with {seen[:1]!r}, expected one with {marker!r}"
    return None


def _select() -> Tuple[Optional[object], Optional[str]]:
    """(the fast primitive or None, why not)."""
    if os.environ.get("VLMRL_TAP_CALLBACK", "").strip().lower() in ("debug", "jax.debug.callback"):
        return None, "VLMRL_TAP_CALLBACK=debug"
    try:
        prim = _make_tap_primitive()
    except Exception as exc:  # another JAX version: the documented (slower) path still works
        return None, f"cannot build the primitive: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    why = probe(prim)
    return (None, why) if why else (prim, None)


CALLBACK_PRIMITIVES = ("tap_callback", "debug_callback")  # what an "on" jaxpr may contain


def emit(callback: Callable, payload) -> None:
    """One unordered host callback (ordered ones fail once a jit spans several devices).
    `callback` receives host numpy arrays (views of XLA's buffers on CPU: copy to keep)."""
    _choose()
    leaves, tree = jax.tree_util.tree_flatten(payload)
    if tap_callback_p is None:
        jax.debug.callback(callback, payload, ordered=False)
        return
    tap_callback_p.bind(*leaves, callback=_Unflatten(callback, tree))


class _Unflatten:
    """Hashable callback wrapper that rebuilds the payload pytree on the host."""

    def __init__(self, fn: Callable, tree):
        self.fn, self.tree = fn, tree

    def __call__(self, *leaves):
        self.fn(jax.tree_util.tree_unflatten(self.tree, leaves))

    def __eq__(self, other):
        return isinstance(other, _Unflatten) and self.fn == other.fn and self.tree == other.tree

    def __hash__(self):
        return hash((self.fn, self.tree))


# Chosen once, at the first emit or the first read of `tap_callback_p` / `FALLBACK_REASON`,
# not at import: the probe runs a jit, which creates JAX's backend, and a multi-process run
# must call jax.distributed.initialize before that happens.
_chosen = False


def _choose() -> None:
    global tap_callback_p, FALLBACK_REASON, _chosen
    if not _chosen:
        with jax.ensure_compile_time_eval():  # the first emit is traced: run the probe, do not stage it
            tap_callback_p, FALLBACK_REASON = _select()
        _chosen = True


def __getattr__(name: str):
    if name in ("tap_callback_p", "FALLBACK_REASON"):
        _choose()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
