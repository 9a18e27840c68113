"""A checkpoint's tokenizer: ids <-> text, the text of one token, special ids, chat template.

`QwenTokenizer` wraps a `tokenizers.Tokenizer` loaded from `tokenizer.json`. Qwen's is a
byte-level BPE: a piece such as "Ġred" stands for the bytes b" red", and one piece may
end inside a UTF-8 character. `token_text` turns one id into what the decoder means by
it, with bytes that do not form a whole character shown as visible marks (‹e2›), never
as U+FFFD. The chat template is the checkpoint's own jinja2 text, rendered the way
Hugging Face renders it (sandboxed, trim/lstrip blocks, the same `tojson` filter);
`docs/tokenizer.md` lists the conventions it relies on.
"""
from __future__ import annotations

import codecs
import functools
import json
import os
from datetime import datetime
from typing import Iterable, List, Optional, Tuple

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
MAX_TEMPLATE_CHARS = 1 << 20  # a chat template is a few KB; refuse megabytes of jinja


def _byte_mark(err: UnicodeDecodeError):
    """codecs error handler: each undecodable byte becomes a visible mark such as ‹e2›."""
    bad = err.object[err.start:err.end]
    return "".join(f"‹{b:02x}›" for b in bad), err.end


codecs.register_error("vlmrl_bytemark", _byte_mark)


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict:
    """GPT-2's reversible byte <-> printable character table, inverted (char -> byte).

    Byte-level BPE writes every byte as one printable character: printable ASCII and most
    of Latin-1 stand for themselves, the other 68 bytes map to U+0100 upward in order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_types(spec) -> List[str]:
    if not isinstance(spec, dict):
        return []
    if spec.get("type") == "Sequence":
        return [t for d in spec.get("decoders") or [] for t in _decoder_types(d)]
    return [str(spec.get("type"))]


class QwenTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer`; special ids are looked up by name."""

    def __init__(self, tokenizer, source: str = "<memory>", chat_template: Optional[str] = None,
                 special_tokens: Optional[dict] = None):
        self.tokenizer = tokenizer  # the underlying `tokenizers.Tokenizer`
        self._tok = tokenizer
        self.source = source
        self.chat_template = chat_template  # the checkpoint's jinja2 text, None: built-in format
        self.special_tokens = dict(special_tokens or {})  # bos_token etc., as templates see them
        try:
            spec = json.loads(tokenizer.to_str()).get("decoder")
        except (ValueError, AttributeError):
            spec = None
        self.byte_level = "ByteLevel" in _decoder_types(spec)
        self._added = {int(i): t.content for i, t in tokenizer.get_added_tokens_decoder().items()}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise KeyError(f"tokenizer {self.source} has no token {token!r}")
        return int(tid)

    def maybe_token_id(self, token: str) -> Optional[int]:
        tid = self._tok.token_to_id(token)
        return None if tid is None else int(tid)

    @property
    def image_pad_id(self) -> int:
        return self.token_id(IMAGE_PAD)

    @property
    def vision_start_id(self) -> int:
        return self.token_id(VISION_START)

    @property
    def vision_end_id(self) -> int:
        return self.token_id(VISION_END)

    @property
    def im_end_id(self) -> int:
        return self.token_id(IM_END)

    @property
    def stop_ids(self) -> Tuple[int, ...]:
        """Tokens that end a reply: <|im_end|> and <|endoftext|> (those the vocab has)."""
        return tuple(t for t in (self.maybe_token_id(IM_END), self.maybe_token_id(ENDOFTEXT)) if t is not None)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = True) -> List[List[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """What one token means as text: byte-level pieces as the bytes they stand for
        ("Ġred" -> " red"), bytes that end mid-character as marks (‹e2›), added tokens as
        themselves; "" for an id the vocabulary does not have."""
        i = int(token_id)
        if i in self._added:
            return self._added[i]
        piece = self._tok.id_to_token(i)
        if piece is None:
            return ""
        if self.byte_level:
            table = byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece).decode("utf-8", errors="vlmrl_bytemark")
            return piece
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte-fallback BPE
            try:
                return bytes([int(piece[3:5], 16)]).decode("utf-8", errors="vlmrl_bytemark")
            except ValueError:
                return piece
        return self._tok.decode([i], skip_special_tokens=False)

    def render_chat(self, text: str, num_images: int = 0, system: Optional[str] = None,
                    add_generation_prompt: bool = True) -> str:
        """One user turn (images first, then text) with this checkpoint's template, else the
        built-in Qwen format; one <|image_pad|> per image, before pad expansion."""
        if self.chat_template is None:
            return builtin_chat(text, num_images, system, add_generation_prompt)
        return render_template(self.chat_template, chat_messages(text, num_images, system),
                               add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def check_special_ids(self, config) -> None:
        """Raise ValueError naming both ids when the tokenizer's special tokens disagree
        with the model config (or the tokenizer lacks one the model needs)."""
        want = [(IMAGE_PAD, config.image_token_id, "image_token_id"),
                (VIDEO_PAD, config.video_token_id, "video_token_id"),
                (VISION_START, config.vision_start_token_id, "vision_start_token_id"),
                (VISION_END, config.vision_end_token_id, "vision_end_token_id"),
                (IM_END, config.text.eos_token_id, "text_config.eos_token_id"),
                (ENDOFTEXT, config.text.bos_token_id, "text_config.bos_token_id")]
        for token, cfg_id, field in want:
            have = self.maybe_token_id(token)
            if cfg_id is None:
                continue
            if have is None:
                raise ValueError(f"tokenizer {self.source} has no {token} but config.json {field} is {cfg_id}")
            if have != int(cfg_id):
                raise ValueError(f"tokenizer {self.source} has {token} = id {have} but config.json {field} "
                                 f"is {cfg_id}")


# ---- chat templates ----------------------------------------------------------------------------

def builtin_chat(text: str, num_images: int = 0, system: Optional[str] = None,
                 add_generation_prompt: bool = True) -> str:
    """Qwen's Instruct format, for tokenizers that ship no template."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    out = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    content = (VISION_START + IMAGE_PAD + VISION_END) * num_images + text
    out += f"{IM_START}user\n{content}{IM_END}\n"
    return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def chat_messages(text: str, num_images: int = 0, system: Optional[str] = None) -> list:
    """The messages list a template sees for one user turn: images first, then the text."""
    msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return msgs + [{"role": "user", "content": content}]


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # as Hugging Face: no HTML escaping, unlike jinja's own tojson
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_template(template: str, messages: list, add_generation_prompt: bool = True, **extra) -> str:
    """Render a chat template (untrusted jinja2: sandboxed); errors become ValueError."""
    import jinja2

    try:
        return _compile(template).render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **extra)
    except jinja2.exceptions.TemplateError as exc:
        raise ValueError(f"chat template failed: {exc}") from None


def _read_json(file: str) -> Optional[dict]:
    if not os.path.isfile(file):
        return None
    if os.path.getsize(file) > 16 * MAX_TEMPLATE_CHARS:
        raise ValueError(f"{file} is too large to be a tokenizer file")
    try:
        with open(file, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return raw


def _template_text(value, file: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        value = named.get("default")
        if value is None:
            return None
    if not isinstance(value, str) or len(value) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"{file}: chat_template must be a string under {MAX_TEMPLATE_CHARS} characters")
    return value


def load_chat_template(path: str) -> Tuple[Optional[str], dict]:
    """(template text or None, special tokens a template may read) from a checkpoint dir:
    `chat_template.jinja`, then `chat_template.json`, then `tokenizer_config.json`'s entry."""
    cfg_file = os.path.join(path, "tokenizer_config.json")
    cfg = _read_json(cfg_file) or {}
    special = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = cfg.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            special[name] = value
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8", errors="replace") as fh:
            return _template_text(fh.read(MAX_TEMPLATE_CHARS + 1), jinja_file), special
    json_file = os.path.join(path, "chat_template.json")
    raw = _read_json(json_file)
    if raw is not None:
        return _template_text(raw.get("chat_template"), json_file), special
    return _template_text(cfg.get("chat_template"), cfg_file), special


def load_tokenizer(path: str) -> QwenTokenizer:
    """Load `tokenizer.json` (+ its chat template) from a checkpoint dir, or the file itself."""
    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no tokenizer.json at {file!r}")
    try:
        tok = Tokenizer.from_file(file)
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
        raise ValueError(f"{file} is not a usable tokenizer.json ({exc})") from None
    template, special = load_chat_template(os.path.dirname(file))
    return QwenTokenizer(tok, source=file, chat_template=template, special_tokens=special)
