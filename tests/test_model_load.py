"""load_hf_checkpoint reads HF directories as they are and fails loudly and completely."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import hf_forward, load_reference, make_prompt

from vlmrl.models.qwen3vl import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from vlmrl.models.qwen3vl.load import UnusedWeightsWarning

pytestmark = pytest.mark.slow
PROMPT = [("text", 3), ("image", (1, 4, 4)), ("text", 3)]


@pytest.fixture(scope="module")
def ckpt(hf_factory):
    return hf_factory(num_kv_heads=2, tie=True, deepstack=(0, 1))


@pytest.fixture
def copy_dir(ckpt, tmp_path):
    """A private copy of the saved checkpoint that a test may damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt[1], dst)
    return str(dst)


def _logits(model, hf):
    ids, pv, grid = make_prompt(hf.config.text_config.vocab_size, PROMPT, seed=1)
    return np.asarray(model(ids, pv, grid)), hf_forward(hf, ids, None, pv, grid)


def _rewrite(path, fn):
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_missing_directory_and_config_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_hf_checkpoint(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(str(tmp_path / "empty"))


def test_missing_and_misshapen_tensors_are_all_named_together(copy_dir):
    name_missing = "model.language_model.layers.1.mlp.up_proj.weight"
    name_bad = "model.visual.blocks.0.attn.qkv.weight"

    def damage(t):
        del t[name_missing]
        t[name_bad] = t[name_bad][:, :-1].copy()  # [96, 32] -> [96, 31]

    _rewrite(copy_dir, damage)
    with pytest.raises(CheckpointError) as info:
        load_hf_checkpoint(copy_dir)
    msg = str(info.value)
    assert len(info.value.problems) == 2
    assert name_missing in msg and "[128, 64]" in msg
    assert name_bad in msg and "[96, 31]" in msg and "[96, 32]" in msg


def test_unused_tensors_warn_by_default_and_fail_when_strict(copy_dir, ckpt):
    _rewrite(copy_dir, lambda t: t.update({"model.visual.extra_head.weight": np.zeros((2, 2), np.float32)}))
    with pytest.warns(UnusedWeightsWarning, match="model.visual.extra_head.weight"):
        model, _ = load_hf_checkpoint(copy_dir)
    ours, ref = _logits(model, ckpt[0])
    assert np.max(np.abs(ours - ref)) <= 1e-4  # the warning did not stop a correct load
    with pytest.raises(CheckpointError, match="extra_head"):
        load_hf_checkpoint(copy_dir, strict=True)


def test_tied_checkpoint_ignores_a_stored_lm_head(copy_dir):
    _rewrite(copy_dir, lambda t: t.update({"lm_head.weight": np.ones_like(t["model.language_model.embed_tokens.weight"])}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not reported as unused either
        model, cfg = load_hf_checkpoint(copy_dir)
    assert cfg.tie_word_embeddings and model.lm_head is None


def test_untied_checkpoint_requires_lm_head(hf_factory, tmp_path):
    _, path = hf_factory(num_kv_heads=1, tie=False, deepstack=(1,))
    dst = str(tmp_path / "untied")
    shutil.copytree(path, dst)
    _rewrite(dst, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="missing tensor lm_head.weight"):
        load_hf_checkpoint(dst)


def test_sharded_checkpoint_with_index_and_official_config(ckpt, tmp_path):
    """Many shards + model.safetensors.index.json, and a config.json in the official
    rope_theta/rope_scaling encoding instead of HF 5.x rope_parameters."""
    from vlmrl.models.qwen3vl import Qwen3VLConfig

    hf, path = ckpt
    dst = str(tmp_path / "sharded")
    hf.save_pretrained(dst, max_shard_size="2MB")
    assert os.path.isfile(os.path.join(dst, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(dst) if f.endswith(".safetensors")]) >= 2
    with open(os.path.join(dst, "config.json")) as fh:
        assert "rope_parameters" in fh.read()
    official = Qwen3VLConfig.from_json_file(os.path.join(path, "config.json")).to_hf_dict()
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(official, fh)
    model, cfg = load_hf_checkpoint(dst)
    assert cfg.text.rope_theta == 5e6 and tuple(cfg.text.mrope_section) == (2, 3, 3)
    ours, ref = _logits(model, hf)
    assert np.max(np.abs(ours - ref)) <= 1e-4


def test_missing_shard_file_is_named(ckpt, tmp_path):
    dst = str(tmp_path / "sharded")
    ckpt[0].save_pretrained(dst, max_shard_size="2MB")
    victim = sorted(f for f in os.listdir(dst) if f.endswith(".safetensors"))[0]
    os.remove(os.path.join(dst, victim))
    with pytest.raises(CheckpointError, match=victim):
        load_hf_checkpoint(dst)


def test_save_roundtrip_is_readable_by_hf_and_by_us(ckpt, tmp_path):
    hf, path = ckpt
    model, _ = load_hf_checkpoint(path)
    out = str(tmp_path / "saved")
    save_hf_checkpoint(model, out)
    again, _ = load_hf_checkpoint(out)
    hf2 = load_reference(out)
    ours, ref = _logits(again, hf)
    _, ref2 = _logits(again, hf2)
    assert np.max(np.abs(ours - ref)) <= 1e-4
    assert np.max(np.abs(ref2 - ref)) == 0.0  # HF reads back the very same weights


@pytest.mark.parametrize("preset", ["2b", "4b", "8b"])
def test_real_checkpoint_names_and_shapes(preset):
    """The name table a real checkpoint must satisfy (docs/qwen3vl.md §8), from an abstract model."""
    from vlmrl.models.qwen3vl import Qwen3VLConfig
    from vlmrl.models.qwen3vl.load import _hf_shape, abstract_model, mapping_table

    cfg = Qwen3VLConfig.preset(preset)
    table = mapping_table(abstract_model(cfg))
    hf = {name: list(_hf_shape(name, shape, tr, cfg)) for name, (_, shape, tr) in table.items()}
    t, v = cfg.text, cfg.vision
    last = t.num_hidden_layers - 1
    assert hf[f"model.language_model.layers.{last}.self_attn.q_proj.weight"] == [t.num_attention_heads * t.head_dim,
                                                                                 t.hidden_size]
    assert hf[f"model.language_model.layers.{last}.self_attn.k_norm.weight"] == [128]
    assert hf["model.language_model.embed_tokens.weight"] == [151936, t.hidden_size]
    assert hf["model.visual.patch_embed.proj.weight"] == [v.hidden_size, 3, 2, 16, 16]
    assert hf["model.visual.deepstack_merger_list.2.norm.weight"] == [4 * v.hidden_size]
    assert hf["model.visual.merger.norm.weight"] == [v.hidden_size]
    assert ("lm_head.weight" in hf) == (not cfg.tie_word_embeddings)
    per_layer_text, per_block_vision, per_merger = 11, 12, 6
    expected = (2 + per_layer_text * t.num_hidden_layers + 3 + per_block_vision * v.depth
                + per_merger * (1 + len(v.deepstack_visual_indexes)) + (0 if cfg.tie_word_embeddings else 1))
    assert len(hf) == expected
