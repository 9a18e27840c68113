"""A small word-level tokenizer with Qwen's special tokens, for the offline tasks.

Built with the `tokenizers` library (WordLevel model + whitespace pre-tokenizer) and saved
as `tokenizer.json`, so the trainer loads it through the same code path as a real
checkpoint's tokenizer (`vlmrl.core.rollout.load_codec` -> the processor's
`load_tokenizer`). The vocabulary is tiny (32 entries for the colour task), which keeps
the RL model's embedding and output layer small and CPU training fast.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Optional, Sequence

# Qwen's special tokens, in Qwen's order (their ids differ here: they follow the words).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
UNK = "[UNK]"

# Words of the chat template and the tasks' questions; tasks add their answer words. Kept to
# what the prompts use: every extra word is one more wrong first token to explore.
BASE_WORDS = ("user", "assistant", "what", "colour", "is", "the", "shape", "how", "many", "shapes", "are",
              "there", "?")


def build_tokenizer(words: Iterable[str]):
    """A `tokenizers.Tokenizer`: [UNK], the given words (deduplicated, order kept), then specials."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab: dict = {UNK: 0}
    for w in list(BASE_WORDS) + list(words):
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"vocabulary word {w!r} must be non-empty without whitespace")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIAL_TOKENS])
    return tok


def write_tokenizer_dir(path: str, words: Sequence[str]) -> str:
    """Save tokenizer.json (+ a tokenizer_config.json naming eos/pad) into `path`; returns path."""
    os.makedirs(path, exist_ok=True)
    tok = build_tokenizer(words)
    tmp = os.path.join(path, "tokenizer.json.tmp")
    tok.save(tmp)
    os.replace(tmp, os.path.join(path, "tokenizer.json"))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "model_max_length": 4096}
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=1)
    return path


class TextCodec:
    """What the trainer needs from any tokenizer: encode, decode, id lookups, vocab size.

    Wraps a `tokenizers.Tokenizer` (ours or a checkpoint's). Decoded text is untrusted:
    the dashboard sanitises it before display.
    """

    def __init__(self, tokenizer, token_text: Optional[Callable[[int], str]] = None,
                 chat: Optional[Callable[[str, int], str]] = None, image_config=None):
        self.tok = tokenizer
        # One token's text as its decoder means it (a checkpoint's byte-level BPE needs the
        # model side's byte table); default: the library's decode of that one id.
        self._token_text = token_text
        # (question, number of images) -> chat prompt before pad expansion; None: built-in format.
        self.chat = chat
        # The checkpoint's image preprocessing values; None: keep each image at its drawn size.
        self.image_config = image_config

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        """The raw vocabulary piece (e.g. "Ġred" in a byte-level BPE); for display use token_text."""
        t = self.tok.id_to_token(int(i))
        return "" if t is None else t

    def token_text(self, i: int) -> str:
        """What token `i` reads as: " red" for the byte-level piece "Ġred"."""
        if self._token_text is not None:
            return self._token_text(int(i))
        return self.tok.decode([int(i)], skip_special_tokens=False)

    def special_ids(self) -> tuple:
        """Ids the tokenizer marks special (chat markers, vision markers, end of text)."""
        return tuple(sorted(i for i, t in self.tok.get_added_tokens_decoder().items() if t.special))

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"tokenizer has no token {token!r}")
        return int(i)
