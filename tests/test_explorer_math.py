"""Token attention explorer numbers against a direct computation from attention tensors."""
import numpy as np
import pytest

from vlmrl.utils.tui import explorer_math as em


def causal_attention(rng, L, H, S):
    """Random softmax attention [L, H, S, S] with a causal mask and a heavy first (sink) slot."""
    scores = rng.normal(size=(L, H, S, S))
    scores[..., 0] += 3.0
    mask = np.tril(np.ones((S, S), bool))
    scores = np.where(mask, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def direct(attn, P):
    """Reference: loops straight from the definition, no shared code with the module."""
    L, H, S, _ = attn.shape
    ins, outs = [], []
    for i in range(S - P + 1):
        q = P - 1 + i
        row = [sum(attn[l, h, q, k] for l in range(L) for h in range(H)) / (L * H) for k in range(S)]
        inp = row[1:P]  # BOS removed
        out = row[P:P + i]
        ins.append([x / (sum(inp) + 1e-8) for x in inp])
        outs.append([x / (sum(out) + 1e-8) for x in out])
    return ins, outs


@pytest.mark.parametrize("P,S", [(5, 9), (2, 4), (1, 3)])
def test_rows_and_matrix_match_direct_computation(P, S):
    rng = np.random.default_rng(P * 10 + S)
    attn = causal_attention(rng, L=3, H=4, S=S)
    want_in, want_out = direct(attn, P)
    mean = attn.mean(axis=(0, 1)).astype(np.float32)
    # What taps send per step: the newest query's row over the cache slots written so far.
    rows = [mean[P - 1 + i, : P + i] for i in range(S - P + 1)]
    tokens = [f"Ġt{i}" for i in range(S)]
    for data in (em.from_rows(rows, P, tokens[:P], tokens[P:]), em.from_matrix(mean, P, tokens)):
        assert data.num_steps == S - P + 1
        assert data.input_labels == tuple(f"t{i}" for i in range(1, P))  # BOS label gone too
        for i in range(data.num_steps):
            np.testing.assert_allclose(data.input_weights[i], want_in[i], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(data.output_weights[i], want_out[i], rtol=1e-5, atol=1e-7)
            assert data.output_weights[i].shape == (i,)


def test_separate_normalisation_by_hand():
    # slots: BOS, a, b | out0 ; query producing output 1
    row = np.array([0.5, 0.2, 0.1, 0.2], np.float32)
    ins, outs = em.split_row(row, input_len=3, step=1)
    np.testing.assert_allclose(ins, [2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(outs, [1.0], rtol=1e-6)
    # joint normalisation would give [0.4, 0.2] and [0.4]: not what the explorer shows
    ins_keep, _ = em.split_row(row, input_len=3, step=1, drop_first=False)
    np.testing.assert_allclose(ins_keep, [0.625, 0.25, 0.125], rtol=1e-6)
    # zero attention stays zero instead of dividing by zero
    z_in, z_out = em.split_row(np.zeros(4, np.float32), 3, 1)
    assert np.all(z_in == 0) and np.all(z_out == 0)


def test_rows_longer_than_needed_are_cut_and_short_ones_rejected():
    row = np.array([0.1, 0.3, 0.6, 0.0, 0.0], np.float32)  # rest of the cache is empty
    ins, outs = em.split_row(row, 3, 0)
    np.testing.assert_allclose(ins, [1 / 3, 2 / 3], rtol=1e-6)
    assert outs.shape == (0,)
    with pytest.raises(ValueError, match="slots"):
        em.split_row(np.ones(3, np.float32), 3, 2)


@pytest.mark.parametrize("raw,label", [
    ("Ġhello", "hello"), ("▁world", "world"), ("Ċ", "\\n"), ("\n", "\\n"), ("a\tb", "a\\tb"), ("<0x0A>", "[EMPTY]"), ("a<0x0A>b", "ab"),
    ("<|begin_of_text|>", "[BOS]"), ("<s>", "[BOS]"), ("</s>", "[EOS]"), ("<|im_end|>", "[EOS]"),
    ("<|endoftext|>", "[EOS]"), ("<unk>", "[UNK]"), ("", "[EMPTY]"), ("   ", "[EMPTY]"), ("ĠĠ", "[EMPTY]"),
    ("<|im_start|>", "[im_start]"), ("<|image_pad|>", "[image_pad]"), ("plain", "plain"),
])
def test_clean_label(raw, label):
    assert em.clean_label(raw) == label


def test_threshold_steps_are_thousandths_clamped_to_range():
    t = 0.05
    t = em.step_threshold(t, +1)
    assert t == 0.051
    for _ in range(500):
        t = em.step_threshold(t, +1)
    assert t == 0.2
    for _ in range(500):
        t = em.step_threshold(t, -1)
    assert t == 0.0
    assert em.step_threshold(0.0, +1) == 0.001


def test_edges_threshold_selection_and_show_all():
    rows = [np.array([0.4, 0.3, 0.3], np.float32),  # step 0: inputs a, b (after BOS)
            np.array([0.4, 0.05, 0.25, 0.3], np.float32)]  # step 1: a, b, out0
    data = em.from_rows(rows, 3, ["<s>", "a", "b"], ["x", "y"])
    cur = em.edges(data, 1, threshold=0.2)
    assert {(e.source, e.target) for e in cur} == {(("in", 1), 1), (("out", 0), 1)}
    assert all(e.target == 1 for e in cur)
    both = em.edges(data, 1, threshold=0.0, show_all=True)
    assert {e.target for e in both} == {0, 1} and len(both) == 2 + 3
    # selecting input a keeps only a's links, across the steps so far
    sel = em.edges(data, 1, threshold=0.0, selected=("in", 0))
    assert {(e.source, e.target) for e in sel} == {(("in", 0), 0), (("in", 0), 1)}
    # selecting output 0 keeps its incoming links and its link into output 1
    sel = em.edges(data, 1, threshold=0.0, selected=("out", 0))
    assert {(e.source, e.target) for e in sel} == {(("in", 0), 0), (("in", 1), 0), (("out", 0), 1)}
    assert [e.weight for e in both] == sorted((e.weight for e in both), reverse=True)


def test_lru_cache_keeps_ten_most_recent():
    cache = em.LRUCache()
    calls = []
    for k in range(12):
        cache.get(("p", k), lambda k=k: calls.append(k) or k)
    assert len(cache) == 10 and ("p", 0) not in cache and ("p", 1) not in cache
    cache.get(("p", 5), lambda: calls.append("again"))
    assert "again" not in calls and cache.hits == 1


def test_sparse_steps_keep_their_numbers_and_unknown_outputs_are_named():
    rng = np.random.default_rng(7)
    attn = causal_attention(rng, L=2, H=2, S=8)
    mean = attn.mean(axis=(0, 1)).astype(np.float32)
    P = 4
    want_in, want_out = direct(attn, P)
    rows = [mean[P - 1 + s, : P + s] for s in (0, 2, 4)]
    data = em.from_rows(rows, P, None, ["Ġa", "Ġb", "Ġc"], steps=[0, 2, 4])
    assert data.steps == (0, 2, 4)
    assert data.output_labels == ("a", "#1", "b", "#3", "c")
    assert data.input_labels == ("in1", "in2", "in3")
    for i, s in enumerate((0, 2, 4)):
        np.testing.assert_allclose(data.input_weights[i], want_in[s], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(data.output_weights[i], want_out[s], rtol=1e-5, atol=1e-7)
    targets = {e.target for e in em.edges(data, 2, 0.0, show_all=True)}
    assert targets == {0, 2, 4}
    with pytest.raises(ValueError, match="increasing"):
        em.from_rows(rows, P, steps=[0, 4, 2])
