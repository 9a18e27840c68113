"""Qwen3-VL configuration: frozen dataclasses read from a Hugging Face config.json.

Both config encodings are accepted (docs/qwen3vl.md §1.1): the official / HF 4.57 form with
`rope_theta` + `rope_scaling`, and the HF 5.x `rope_parameters` dict.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: Tuple[int, int, int] = (24, 20, 20)
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = True
    bos_token_id: int = 151643
    eos_token_id: int = 151645


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 24
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2048
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: Tuple[int, ...] = (5, 11, 17)
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6  # hard-coded in HF, not read from config.json

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = True
    name: str = "custom"

    # ---- presets -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "Qwen3VLConfig":
        try:
            return _PRESETS[name]()
        except KeyError:
            raise ValueError(f"unknown Qwen3-VL preset {name!r}; choose one of {sorted(_PRESETS)}") from None

    @classmethod
    def tiny(cls, vocab_size: int = 152000, tie: bool = True) -> "Qwen3VLConfig":
        """Seconds to compile on CPU; keeps the real special-token ids."""
        text = TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, mrope_section=(2, 3, 3),
                          max_position_embeddings=4096, tie_word_embeddings=tie)
        vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                              num_position_embeddings=64, deepstack_visual_indexes=(0, 1))
        return cls(text=text, vision=vision, tie_word_embeddings=tie, name="tiny")

    @classmethod
    def qwen3vl_2b(cls) -> "Qwen3VLConfig":
        return cls(text=TextConfig(), vision=VisionConfig(), tie_word_embeddings=True, name="2b")

    @classmethod
    def qwen3vl_4b(cls) -> "Qwen3VLConfig":
        text = TextConfig(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32)
        return cls(text=text, vision=VisionConfig(out_hidden_size=2560), tie_word_embeddings=True, name="4b")

    @classmethod
    def qwen3vl_8b(cls) -> "Qwen3VLConfig":
        text = TextConfig(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                          tie_word_embeddings=False)
        vision = VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, out_hidden_size=4096,
                              deepstack_visual_indexes=(8, 16, 24))
        return cls(text=text, vision=vision, tie_word_embeddings=False, name="8b")

    # ---- Hugging Face config.json ----------------------------------------------------
    @classmethod
    def from_hf_dict(cls, raw: dict, name: str = "hf") -> "Qwen3VLConfig":
        """Raises CheckpointError naming every size that is missing, not an integer or out
        of range, before anything is built from them."""
        if not isinstance(raw, dict):
            raise CheckpointError("config.json", ["config.json is not a JSON object"])
        tc = raw.get("text_config") or {}
        vc = raw.get("vision_config") or {}
        if not isinstance(tc, dict) or not isinstance(vc, dict):
            raise CheckpointError("config.json", ["text_config and vision_config must be JSON objects"])
        tc, vc = dict(tc), dict(vc)
        if not tc:
            raise CheckpointError("config.json", ["config.json has no text_config: not a Qwen3-VL checkpoint"])
        problems = _size_problems(tc, vc, raw)
        if problems:
            raise CheckpointError("config.json", problems)
        rope_params = tc.get("rope_parameters") or {}
        rope_scaling = tc.get("rope_scaling") or {}
        theta = rope_params.get("rope_theta", tc.get("rope_theta"))
        if theta is None:
            raise ValueError("config.json text_config has neither rope_parameters.rope_theta nor rope_theta")
        section = rope_params.get("mrope_section") or rope_scaling.get("mrope_section") or [24, 20, 20]
        tie = bool(raw.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)))
        text = TextConfig(
            vocab_size=tc["vocab_size"], hidden_size=tc["hidden_size"], intermediate_size=tc["intermediate_size"],
            num_hidden_layers=tc["num_hidden_layers"], num_attention_heads=tc["num_attention_heads"],
            num_key_value_heads=tc.get("num_key_value_heads", tc["num_attention_heads"]),
            head_dim=tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"],
            rms_norm_eps=tc.get("rms_norm_eps", 1e-6), rope_theta=float(theta), mrope_section=tuple(section),
            max_position_embeddings=tc.get("max_position_embeddings", 262144), tie_word_embeddings=tie,
            bos_token_id=_first(tc.get("bos_token_id", raw.get("bos_token_id")), 151643),
            eos_token_id=_first(tc.get("eos_token_id", raw.get("eos_token_id")), 151645),
        )
        vrope = vc.get("rope_parameters") or {}
        vision = VisionConfig(
            depth=vc.get("depth", 24), hidden_size=vc.get("hidden_size", 1024),
            intermediate_size=vc.get("intermediate_size", 4096), num_heads=vc.get("num_heads", 16),
            in_channels=vc.get("in_channels", 3), patch_size=vc.get("patch_size", 16),
            temporal_patch_size=vc.get("temporal_patch_size", 2), spatial_merge_size=vc.get("spatial_merge_size", 2),
            out_hidden_size=vc.get("out_hidden_size", text.hidden_size),
            num_position_embeddings=vc.get("num_position_embeddings", 2304),
            deepstack_visual_indexes=tuple(vc.get("deepstack_visual_indexes", (5, 11, 17))),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
        )
        if vision.out_hidden_size != text.hidden_size:
            problems.append(f"vision_config.out_hidden_size {vision.out_hidden_size} != "
                            f"text_config.hidden_size {text.hidden_size}")
        if vision.hidden_size % vision.num_heads or vision.head_dim % 4:
            problems.append(f"vision hidden_size {vision.hidden_size} / num_heads {vision.num_heads} must be a "
                            "whole head_dim divisible by 4 for the 2D rotary")
        if text.num_attention_heads % text.num_key_value_heads:
            problems.append(f"text num_attention_heads {text.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {text.num_key_value_heads}")
        if sum(text.mrope_section) * 2 != text.head_dim:
            problems.append(f"mrope_section {list(text.mrope_section)} must sum to head_dim/2 = {text.head_dim // 2}")
        if any(i >= vision.depth for i in vision.deepstack_visual_indexes):
            problems.append(f"deepstack_visual_indexes {list(vision.deepstack_visual_indexes)} must be below "
                            f"the vision depth {vision.depth}")
        if problems:
            raise CheckpointError("config.json", problems)
        return cls(
            text=text, vision=vision, tie_word_embeddings=tie,
            image_token_id=raw.get("image_token_id", 151655), video_token_id=raw.get("video_token_id", 151656),
            vision_start_token_id=raw.get("vision_start_token_id", 151652),
            vision_end_token_id=raw.get("vision_end_token_id", 151653), name=name,
        )

    @classmethod
    def from_json_file(cls, path: str) -> "Qwen3VLConfig":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            with open(path, "rb") as fh:
                data = fh.read(CONFIG_MAX + 1)
            if len(data) > CONFIG_MAX:
                raise ValueError(f"larger than {CONFIG_MAX} bytes")
            raw = json.loads(data)
        except (OSError, ValueError, RecursionError) as exc:
            raise CheckpointError(path, [f"not a readable JSON file: {exc}"]) from None
        try:
            return cls.from_hf_dict(raw, name=os.path.basename(os.path.dirname(os.path.abspath(path))))
        except CheckpointError as exc:
            raise CheckpointError(path, exc.problems) from None

    def to_hf_dict(self) -> dict:
        """A config.json in the official (4.57-style) encoding."""
        t, v = self.text, self.vision
        text_config: dict[str, Any] = {
            "model_type": "qwen3_vl_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim, "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta, "max_position_embeddings": t.max_position_embeddings,
            "rope_scaling": {"rope_type": "default", "mrope_section": list(t.mrope_section), "mrope_interleaved": True},
            "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": False,
            "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
        }
        vision_config = {
            "model_type": "qwen3_vl", "depth": v.depth, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_channels": v.in_channels,
            "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size, "out_hidden_size": v.out_hidden_size,
            "num_position_embeddings": v.num_position_embeddings, "hidden_act": "gelu_pytorch_tanh",
            "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
        }
        return {
            "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "text_config": text_config, "vision_config": vision_config,
            "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


CONFIG_MAX = 1 << 20  # bytes of config.json (a real one is a few KB)

# (section, key, default or None when required, upper bound): every size a config gives.
# Bounds are far above any Qwen3-VL (8B: 36 layers, hidden 4096) and keep a crafted config
# from building 100,000 layers before any other check.
_SIZES = (
    ("text", "vocab_size", None, 1 << 22), ("text", "hidden_size", None, 1 << 16),
    ("text", "intermediate_size", None, 1 << 18), ("text", "num_hidden_layers", None, 1024),
    ("text", "num_attention_heads", None, 1024), ("text", "num_key_value_heads", 1, 1024),
    ("text", "head_dim", 1, 4096), ("text", "max_position_embeddings", 1, 1 << 24),
    ("vision", "depth", 24, 1024), ("vision", "hidden_size", 1024, 1 << 16),
    ("vision", "intermediate_size", 4096, 1 << 18), ("vision", "num_heads", 16, 1024),
    ("vision", "in_channels", 3, 16), ("vision", "patch_size", 16, 1024), ("vision", "temporal_patch_size", 2, 64),
    ("vision", "spatial_merge_size", 2, 64), ("vision", "out_hidden_size", 1, 1 << 16),
    ("vision", "num_position_embeddings", 2304, 1 << 20),
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _size_problems(tc: dict, vc: dict, raw: dict) -> list:
    """Every size that is missing, not a positive integer, or beyond its bound."""
    problems = []
    for section, key, default, hi in _SIZES:
        d = tc if section == "text" else vc
        if key not in d or d[key] is None:
            if default is None:
                problems.append(f"{section}_config.{key} is missing")
            continue
        v = d[key]
        if not _is_int(v) or not 1 <= v <= hi:
            problems.append(f"{section}_config.{key} must be an integer in [1, {hi}], got {str(v)[:40]!r}")
    for key in ("deepstack_visual_indexes",):
        v = vc.get(key, [])
        if not isinstance(v, (list, tuple)) or len(v) > 1024 or not all(_is_int(i) and 0 <= i < 1024 for i in v):
            problems.append(f"vision_config.{key} must be a list of layer indexes")
    for d, key in ((tc, "rope_parameters"), (tc, "rope_scaling"), (vc, "rope_parameters")):
        if d.get(key) is not None and not isinstance(d.get(key), dict):
            problems.append(f"{key} must be a JSON object, got {str(d.get(key))[:40]!r}")
            return problems
    rope = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    section = rope.get("mrope_section")
    theta = (tc.get("rope_parameters") or {}).get("rope_theta", tc.get("rope_theta"))
    if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < 1e300):
        problems.append(f"rope_theta must be a positive number, got {str(theta)[:40]!r}")
    vtheta = (vc.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    if isinstance(vtheta, bool) or not isinstance(vtheta, (int, float)) or not 0 < vtheta < 1e300:
        problems.append(f"vision rope_theta must be a positive number, got {str(vtheta)[:40]!r}")
    for key in ("bos_token_id", "eos_token_id"):
        v = tc.get(key, raw.get(key))
        ids = v if isinstance(v, (list, tuple)) else [v]
        if v is not None and not all(_is_int(i) and 0 <= i < 1 << 31 for i in ids[:1]):
            problems.append(f"{key} must be a token id, got {str(v)[:40]!r}")
    if section is not None and not (isinstance(section, (list, tuple)) and len(section) == 3
                                    and all(_is_int(i) and 0 <= i <= 4096 for i in section)):
        problems.append(f"mrope_section must be three non-negative integers, got {str(section)[:40]}")
    for d, key in ((tc, "rms_norm_eps"),):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e300):
            problems.append(f"text_config.{key} must be a positive number, got {str(v)[:40]!r}")
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        v = raw.get(key)
        if v is not None and (not _is_int(v) or not 0 <= v < 1 << 31):
            problems.append(f"{key} must be a token id, got {str(v)[:40]!r}")
    return problems


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; `.problems` lists every issue found."""

    def __init__(self, path: str, problems: List[str]):
        self.path, self.problems = path, list(problems)
        super().__init__(f"cannot load Qwen3-VL checkpoint {path}: {len(problems)} problem(s)\n  "
                         + "\n  ".join(self.problems))


def _first(value: Optional[Any], default: int) -> int:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else default
    return default if value is None else int(value)


_PRESETS = {
    "tiny": Qwen3VLConfig.tiny,
    "2b": Qwen3VLConfig.qwen3vl_2b,
    "4b": Qwen3VLConfig.qwen3vl_4b,
    "8b": Qwen3VLConfig.qwen3vl_8b,
}
