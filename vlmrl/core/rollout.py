"""Policy setup and rollouts: build (or load) the model, sample completions, score them.

Rollouts go through TAPS' sampler (`vlmrl.core.sampling.Sampler`), so with `--tui` the
same jitted decode loop publishes DecodeState events. A rollout is `group` samples of each
of `batch` prompts (adjacent rows), the rewards the environment gives them, and the
full-sequence inputs (prompt + completion, mRoPE positions, pixel patches) the PPO update
recomputes log-probabilities on.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmrl.core.mesh import batch_tree_shardings, put
from vlmrl.envs.base import PromptBatch, rewards_for
from vlmrl.envs.tokenizer import TextCodec, write_tokenizer_dir
from vlmrl.models.qwen3vl.config import Qwen3VLConfig

INIT_STD = 0.02  # Hugging Face's initializer_range: near-uniform first policy, room to explore


# ---- the policy -----------------------------------------------------------------------------

def load_codec(path: str, image_config=None) -> TextCodec:
    """A checkpoint directory's (or our word-level) tokenizer.json, via the processor's loader,
    with its chat template and token texts as the tokenizer's decoder means them."""
    from vlmrl.models.qwen3vl.processor import load_tokenizer

    return codec_from(load_tokenizer(path), image_config)


def codec_from(qt, image_config=None) -> TextCodec:
    """A TextCodec over a loaded `QwenTokenizer`: its token texts and its chat template (if any)."""
    chat = None if qt.chat_template is None else qt.render_chat
    return TextCodec(qt.tokenizer, token_text=qt.token_text, chat=chat, image_config=image_config)


def tiny_config(codec: TextCodec) -> Qwen3VLConfig:
    """Qwen3VLConfig.tiny shapes with the vocabulary and special-token ids of `codec`."""
    base = Qwen3VLConfig.tiny(vocab_size=codec.vocab_size)
    text = dataclasses.replace(base.text, bos_token_id=codec.token_id("<|endoftext|>"),
                               eos_token_id=codec.token_id("<|im_end|>"))
    return dataclasses.replace(
        base, text=text, image_token_id=codec.token_id("<|image_pad|>"),
        video_token_id=codec.token_id("<|video_pad|>"), vision_start_token_id=codec.token_id("<|vision_start|>"),
        vision_end_token_id=codec.token_id("<|vision_end|>"), name="tiny-rl")


def logits_fn(graphdef):
    """`apply_fn(params, batch) -> logits` of the policy `graphdef` over a rollout batch (ids,
    attn_mask, position_ids, pixel_values, vinputs): what the scorer and the PPO update call."""
    def apply_fn(params, b):
        pv = b["pixel_values"]
        logits, _, _ = nnx.merge(graphdef, params).forward(b["ids"], b["attn_mask"], b["position_ids"],
                                                           pixel_values=pv.reshape(-1, pv.shape[-1]),
                                                           vinputs=b["vinputs"])
        return logits

    return apply_fn


def init_model(config: Qwen3VLConfig, seed: int, dtype=jnp.float32):
    """A fresh Qwen3VL with HF-style init: weight matrices N(0, 0.02), norm scales 1, biases 0.

    nnx's default embedding init (std 1) makes a tied output layer emit near one-hot
    distributions; RL from scratch needs the near-uniform start HF's init gives. The values
    are drawn with numpy into an abstract (eval_shape) model: no per-parameter XLA compile.
    """
    from vlmrl.models.qwen3vl.model import Qwen3VL

    abstract = nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(state):
        spec = var.get_value()
        if len(spec.shape) >= 2:
            value = rng.normal(0.0, INIT_STD, spec.shape)
        elif str(path[-1]) == "bias":
            value = np.zeros(spec.shape)
        else:  # RMSNorm weight / LayerNorm scale
            value = np.ones(spec.shape)
        flat.append((path, var.replace(jnp.asarray(value, spec.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def build_policy(model_name: str, env, seed: int, model_dir: Optional[str] = None, workdir: Optional[str] = None,
                 dtype=jnp.float32):
    """(model, config, codec) for `--model tiny` or `--model_dir HF_DIR`.

    tiny: writes our word-level tokenizer.json (the env's answers in its vocabulary) into
    `workdir` (default: a temporary directory) and loads it back through the checkpoint
    path, then builds the model from it.
    """
    if model_dir is not None:
        from vlmrl.models.qwen3vl.load import load_hf_checkpoint, read_config
        from vlmrl.models.qwen3vl.processor import ImageProcessorConfig, load_tokenizer

        config = read_config(model_dir)
        qt = load_tokenizer(model_dir)
        qt.check_special_ids(config)  # before the weights: a mismatch is one clear error
        images = ImageProcessorConfig.from_pretrained(model_dir)
        if (images.patch_size, images.merge_size, images.temporal_patch_size) != (
                config.vision.patch_size, config.vision.spatial_merge_size, config.vision.temporal_patch_size):
            raise ValueError(f"preprocessor_config.json patch/merge/temporal size {images.patch_size}/"
                             f"{images.merge_size}/{images.temporal_patch_size} disagree with config.json's "
                             f"{config.vision.patch_size}/{config.vision.spatial_merge_size}/"
                             f"{config.vision.temporal_patch_size}")
        codec = codec_from(qt, images)
        model, config = load_hf_checkpoint(model_dir, dtype=dtype)
        return model, config, codec
    if model_name != "tiny":
        raise ValueError(f"--model {model_name!r}: only 'tiny' is built in; pass --model_dir for a checkpoint")
    if workdir is None:  # the codec holds the whole vocabulary in memory once loaded
        with tempfile.TemporaryDirectory(prefix="vlmrl-tok-") as tmp:
            codec = load_codec(write_tokenizer_dir(tmp, env.answers))
    else:
        codec = load_codec(write_tokenizer_dir(workdir, env.answers))
    config = tiny_config(codec)
    return init_model(config, seed, dtype), config, codec


def sampling_config(codec: TextCodec):
    """Stops and padding from the tokenizer; finer length buckets than the sampler's default
    (64+), because our prompts are ~20 tokens and the update recomputes every padded slot."""
    from vlmrl.core.sampling import SamplingConfig

    stops = tuple(codec.token_id(t) for t in ("<|im_end|>", "<|endoftext|>"))
    base = SamplingConfig()
    return SamplingConfig(stop_ids=stops, pad_id=codec.token_id("<|endoftext|>"),
                          prompt_buckets=(16, 24, 32, 48) + base.prompt_buckets,
                          new_token_buckets=(2, 4, 8) + base.new_token_buckets,
                          special_ids=codec.special_ids(), image_config=codec.image_config)


# ---- prompts ----------------------------------------------------------------------------------

def make_batch(env, codec, seed: int, start: int, n: int) -> PromptBatch:
    """Examples start..start+n of `env` as sampler inputs, through the Qwen3-VL processor:
    the chat template with one image (pads expanded for its grid) and its pixel patches.
    A checkpoint's own template and preprocessor values are used when the codec has them;
    otherwise images keep their drawn size (min/max pixels pinned to it)."""
    from vlmrl.models.qwen3vl import processor

    exs = env.examples(seed, start, n)
    prompts, pixels, grids = [], [], []
    cfg = codec.image_config
    merge = 2 if cfg is None else cfg.merge_size
    for ex in exs:
        if cfg is None:
            area = int(ex.image.shape[0] * ex.image.shape[1])
            pv, grid = processor.preprocess_images([ex.image], min_pixels=area, max_pixels=area)
        else:
            pv, grid = processor.preprocess_images([ex.image], cfg)
        chat = codec.chat(ex.question, 1) if codec.chat is not None else processor.render_chat(ex.question, 1)
        text = processor.expand_image_pads(chat, grid, merge)
        prompts.append(np.asarray(codec.encode(text), np.int32))
        pixels.append(pv)
        grids.append(grid[0])
    return PromptBatch(prompts, np.concatenate(pixels), np.asarray(grids, np.int64), exs)


# ---- one rollout ------------------------------------------------------------------------------

@dataclasses.dataclass
class Rollout:
    """R = batch * group rows; S prompt slots (left padded), N completion slots."""

    ids: np.ndarray  # int32 [R, S + N]: prompt then completion (pad after a row stops)
    attn_mask: np.ndarray  # int32 [R, S + N]: prompt padding 0, completion 1
    position_ids: np.ndarray  # int32 [3, R, S + N]
    pixel_values: np.ndarray  # float32 [R, P, D]: each row's own image patches
    grid: np.ndarray  # int64 [3]: the (shared) image grid
    completion_mask: np.ndarray  # bool [R, N]: generated tokens (stop token included)
    sample_logp: np.ndarray  # float32 [R, N]: the sampler's log-probs
    rewards: np.ndarray  # float32 [R]
    texts: list  # decoded completions
    prompt_len: int  # S
    gen_tokens: int  # tokens generated in this rollout
    seconds: float  # wall time of sampling
    examples: list = dataclasses.field(default_factory=list)  # per row: the env Example it answers


def completion_texts(tokens, mask, codec, stop_ids) -> list:
    """The text each completion is scored on: its tokens less the stop tokens.

    Only stop tokens are dropped: skipping every special token let the policy earn full
    reward for "<|box_start|> red" (it learned exactly that)."""
    stops = set(int(i) for i in stop_ids)
    return [codec.decode([int(i) for i in t[m] if int(i) not in stops]) for t, m in zip(tokens, mask)]


def collect(sampler, env, codec, config: Qwen3VLConfig, *, seed: int, step: int, batch: int, group: int,
            max_new_tokens: int, temperature: float, key) -> Rollout:
    """Sample `group` completions for each of `batch` prompts of update `step` and score them."""
    prompts = make_batch(env, codec, seed, step * batch, batch).repeat(group)
    grid = _shared_grid(prompts)
    t0 = time.perf_counter()
    out = sampler.generate(prompts=prompts.prompt_ids, pixel_values=prompts.pixel_values,
                           image_grid_thw=prompts.image_grid_thw, max_new_tokens=max_new_tokens, key=key,
                           temperature=temperature)
    seconds = time.perf_counter() - t0
    texts = completion_texts(out.tokens, out.mask, codec, sampler.config.stop_ids)
    rewards = rewards_for(env, texts, prompts.examples)
    tokens, mask = _cut_at_vision_tokens(out.tokens, out.mask, config, sampler.config.pad_id)
    ids = np.concatenate([out.prompt_ids, tokens], axis=1).astype(np.int32)
    attn = np.concatenate([out.prompt_mask, np.ones_like(out.tokens)], axis=1).astype(np.int32)
    from vlmrl.models.qwen3vl.positions import get_rope_index

    pos, _ = get_rope_index(ids, prompts.image_grid_thw, attn, config)
    R = len(prompts)
    return Rollout(ids=ids, attn_mask=attn, position_ids=np.asarray(pos, np.int32),
                   pixel_values=prompts.pixel_values.reshape(R, -1, prompts.pixel_values.shape[-1]), grid=grid,
                   completion_mask=mask, sample_logp=out.logprobs.astype(np.float32), rewards=rewards,
                   texts=texts, prompt_len=int(out.prompt_ids.shape[1]), gen_tokens=int(out.mask.sum()),
                   examples=list(prompts.examples),
                   seconds=seconds)


def _cut_at_vision_tokens(tokens, mask, config, pad_id):
    """Drop everything from a sampled image/video/vision marker on (in the update's view).

    The full-sequence forward treats every <|image_pad|> as a slot for image features
    (scattered row-major across the batch), so one sampled in a completion would shift
    other rows' images and break the mRoPE layout. Such a token and those after it get no
    loss; earlier tokens are unaffected (causal attention).
    """
    bad = np.isin(tokens, [config.image_token_id, config.video_token_id, config.vision_start_token_id,
                           config.vision_end_token_id]) & mask
    keep = mask & (np.cumsum(bad, axis=1) == 0)
    return np.where(keep, tokens, pad_id).astype(np.int32), keep


def _shared_grid(prompts: PromptBatch) -> np.ndarray:
    grids = np.asarray(prompts.image_grid_thw)
    if len(np.unique(grids, axis=0)) != 1:
        raise ValueError(f"a rollout needs one image size for all prompts (fixed-shape minibatches); "
                         f"got grids {np.unique(grids, axis=0).tolist()}")
    return grids[0]


def vision_inputs(grid: np.ndarray, n_images: int, vision_config):
    """VisionInputs for n_images images of one grid (what each minibatch feeds the tower)."""
    from vlmrl.models.qwen3vl.vision import prepare_vision_inputs

    return prepare_vision_inputs(np.tile(np.asarray(grid, np.int64)[None], (n_images, 1)), vision_config)


def to_device(tree, mesh=None):
    """A rollout dict on device: whole on the default device, or with its rows split over
    the mesh's data axis (`mesh.batch_tree_shardings`)."""
    if mesh is None:
        return jax.tree_util.tree_map(jnp.asarray, tree)
    return put(tree, batch_tree_shardings(tree, mesh))
