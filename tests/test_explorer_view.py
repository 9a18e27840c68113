"""Token attention explorer view: numbers on screen, keys, padding, sparse steps, cache."""
import numpy as np

from vlmrl.instrument.events import AttentionMatrix, DecodeState
from vlmrl.utils.tui import explorer_math as em
from vlmrl.utils.tui.layout import render_screen
from vlmrl.utils.tui.palette import palette_for
from vlmrl.utils.tui.panels import explorer
from vlmrl.utils.tui.render_cache import RenderCache
from vlmrl.utils.tui.store import Store
from vlmrl.utils.tui.view import ViewState, handle_key

PROMPT = ["<|im_start|>", "Ġthe", "Ġcat", "Ġsat", "Ċ"]
OUTPUTS = ["Ġon", "Ġthe", "Ġmat", "."]


def attention(P, n_out, seed=0, pad=0):
    """Mean-over-layers-and-heads causal attention over pad + prompt + outputs (pads masked)."""
    S = pad + P + n_out
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(3, 2, S, S))
    mask = np.tril(np.ones((S, S), bool))
    mask[:, :pad] = False
    p = np.where(mask, np.exp(scores), 0.0)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-30)
    return p.mean(axis=(0, 1)).astype(np.float32)


def make_state(steps=None, pad=0, with_matrix=True, seed=0):
    P = pad + len(PROMPT)
    att = attention(len(PROMPT), len(OUTPUTS), seed, pad)
    store = Store(clock=lambda: 0.0, started_at=0.0)
    if with_matrix:
        store.apply(AttentionMatrix(layer=None, head=None, query_tokens=PROMPT, key_tokens=PROMPT,
                                    token_types=["special"] + ["text"] * 4, matrix=att[pad:P, pad:P]))
    for i in (steps if steps is not None else range(len(OUTPUTS))):
        store.apply(DecodeState(step=i, token_text=OUTPUTS[i], token_id=100 + i, cache_len=P + i,
                                attention_row=att[P - 1 + i, : P + i], phase="prefill" if i == 0 else "decode"))
    return store.snapshot(), att


def press(view, keys, state):
    for k in keys:
        view = handle_key(view, k, state)
    return view


def text(state, view, w=100, h=30, cache=None):
    return render_screen(state, view, w, h, 0.0, palette_for(False), cache=cache).text()


def test_links_on_screen_equal_a_direct_computation():
    state, att = make_state()
    P = len(PROMPT)
    screen = text(state, press(ViewState(), ["e"], state))
    step = len(OUTPUTS) - 1
    row = att[P - 1 + step, : P + step].astype(np.float64)
    inputs = row[1:P] / (row[1:P].sum() + 1e-8)  # BOS slot removed, inputs normalised alone
    outputs = row[P:] / (row[P:].sum() + 1e-8)  # earlier outputs normalised alone
    names = [f"in[{i}] '{em.clean_label(t)}'" for i, t in enumerate(PROMPT[1:])]
    names += [f"out[{j}] '{em.clean_label(t)}'" for j, t in enumerate(OUTPUTS[:step])]
    want = sorted(zip(np.concatenate([inputs, outputs]), names), key=lambda p: -p[0])
    target = f"out[{step}] '.'"
    for w, name in want:
        line = f"{w:.3f}"
        if w >= em.DEFAULT_THRESHOLD:
            assert f"{line} " in screen and f"{name} -> {target}" in screen, (name, line)
    shown = sum(1 for w, _ in want if w >= em.DEFAULT_THRESHOLD)
    assert f"LINKS ({shown} at or above threshold" in screen
    assert "[im_start]" not in screen.split("INPUT")[1].split("OUTPUT")[0]  # first slot dropped


def test_keys_step_threshold_select_reset_and_show_all():
    state, _ = make_state()
    v = press(ViewState(), ["e"], state)
    assert "step 3 (4/4 emitted, newest)" in text(state, v)
    v = press(v, ["KEY_LEFT", "KEY_LEFT"], state)
    assert "step 1 (2/4 emitted)" in text(state, v)
    v = press(v, ["KEY_HOME"], state)
    assert "step 0 (1/4" in text(state, v)
    v = press(v, ["KEY_END"], state)
    assert "newest" in text(state, v)
    v = press(v, ["+", "+", "-", "]"], state)
    assert "threshold 0.061" in text(state, v)
    for _ in range(300):
        v = handle_key(v, "+", state)
    assert explorer.get_view(v).threshold == 0.2
    v = press(v, ["["] * 30, state)
    assert explorer.get_view(v).threshold == 0.0
    screen = text(state, v)
    assert "LINKS (7 at or above" in screen  # 4 inputs + 3 earlier outputs at threshold 0
    v = press(v, ["KEY_DOWN", "KEY_DOWN"], state)
    assert explorer.get_view(v).selected == ("in", 1)
    screen = text(state, v)
    assert "selected in[1] 'cat'" in screen
    assert "LINKS (4 at or above" in screen  # 'cat' into each of the 4 outputs so far
    v = press(v, ["KEY_UP", "KEY_UP"], state)  # wraps round to the last output
    assert explorer.get_view(v).selected == ("out", 3)
    v = press(v, ["r"], state)
    assert explorer.get_view(v).selected is None and "selected none" in text(state, v)
    v = press(v, ["a"], state)
    assert "links all steps" in text(state, v)
    assert "LINKS (22 at or above" in text(state, v)  # 4 steps x 4 inputs + 0+1+2+3 earlier outputs


def test_left_padding_is_found_without_the_prompt_texts():
    pad = 3
    padded, att = make_state(pad=pad, with_matrix=False)
    d_pad, why = explorer.explorer_data(padded, 0)
    assert why is None and d_pad.input_labels == tuple(f"in{i}" for i in range(1, len(PROMPT)))
    P = pad + len(PROMPT)
    for i, got in enumerate(d_pad.input_weights):
        part = att[P - 1 + i, pad + 1:P].astype(np.float64)  # pads and the first real token dropped
        np.testing.assert_allclose(got, part / (part.sum() + 1e-8), rtol=1e-5)
    # with the prefill matrix's texts the padding is known exactly, labels are the tokens
    with_texts, _ = make_state(pad=pad)
    d_txt, _ = explorer.explorer_data(with_texts, 0)
    assert d_txt.input_labels == ("the", "cat", "sat", "\\n")
    for a, b in zip(d_txt.input_weights, d_pad.input_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sparse_emits_keep_true_step_numbers():
    state, att = make_state(steps=[0, 3])  # taps emitting every third step
    data, _ = explorer.explorer_data(state, 0)
    assert data.steps == (0, 3)
    assert data.output_labels == ("on", "#1", "#2", ".")
    P = len(PROMPT)
    row = att[P + 2, : P + 3]
    np.testing.assert_allclose(data.output_weights[1], row[P:] / (row[P:].sum() + 1e-8), rtol=1e-5)
    screen = text(state, press(ViewState(), ["e"], state))
    assert "step 3 (2/2 emitted, newest)" in screen and "#1" in screen


def test_processed_attention_is_cached_per_prompt_and_length():
    state, _ = make_state()
    cache = RenderCache()  # the dashboard's: keys and frames share it
    v = press(ViewState(), ["e"], state)
    text(state, v, cache=cache)
    lru = explorer.processed(cache)
    misses = lru.misses
    for key in ["KEY_LEFT", "+", "KEY_DOWN", "a"]:
        v = handle_key(v, key, state, cache)
        text(state, v, cache=cache)
    assert lru.misses == misses  # navigation reuses the processed rows
    state2, _ = make_state(steps=[0, 1])  # same prompt, another length: processed anew
    text(state2, v, cache=cache)
    assert lru.misses == misses + 1


def test_without_attention_rows_it_says_what_to_enable():
    state = Store().snapshot()
    screen = text(state, ViewState(mode="explorer"))
    assert "no attention rows yet" in screen and "attention_row=True" in screen
