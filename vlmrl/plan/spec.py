"""What the planner is asked about: one RL run's shape, checked, with its derived sizes.

A run is `batch` prompts x `group` samples each; every prompt holds `context` text tokens
and `images` images, each image adding its vision tokens (from the processor's own resize
rules) plus a vision-start and a vision-end marker; each sample generates up to `max_new`
tokens. The update splits the rows into `minibatches`, as the trainer does.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from vlmrl.models.qwen3vl.config import Qwen3VLConfig
from vlmrl.models.qwen3vl.processor import ImageProcessorConfig, num_image_tokens, smart_resize
from vlmrl.plan.counts import canonical_dtype
from vlmrl.plan.lengths import Lengths

MARKERS_PER_IMAGE = 2  # <|vision_start|> and <|vision_end|> around each image's pads
MESH_AXES = ("data", "fsdp", "tensor")
VISION_ATTENTION = ("batch", "image")


class PlanError(ValueError):
    """A value the planner cannot plan for; the CLI prints it on one line and exits 2."""


@dataclasses.dataclass(frozen=True)
class Mesh:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """Rows are split over data and fsdp (fsdp also splits the parameters)."""
        return self.data * self.fsdp

    @property
    def param_shards(self) -> int:
        return self.fsdp * self.tensor

    def __str__(self) -> str:
        return f"data={self.data},fsdp={self.fsdp},tensor={self.tensor}"

    @classmethod
    def parse(cls, text: str) -> "Mesh":
        """'data=2,fsdp=4,tensor=1' (any subset, any order) -> Mesh."""
        sizes = {}
        for part in str(text).split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in MESH_AXES:
                raise PlanError(f"--mesh {text!r}: expected axis=size with axes {', '.join(MESH_AXES)}")
            if name in sizes:
                raise PlanError(f"--mesh {text!r}: axis {name} given twice")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise PlanError(f"--mesh {text!r}: size of {name} must be an integer, got {value.strip()!r}") from None
            if sizes[name] < 1:
                raise PlanError(f"--mesh {text!r}: size of {name} must be >= 1, got {sizes[name]}")
        return cls(**sizes)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    config: Qwen3VLConfig
    batch: int = 8                    # prompts per update
    group: int = 8                    # samples per prompt
    context: int = 512                # text tokens of each prompt (chat template included)
    max_new: int = 512                # completion tokens reserved per sample
    images: int = 1                   # images per prompt
    image_hw: Tuple[int, int] = (448, 448)
    processor: ImageProcessorConfig = ImageProcessorConfig()
    dtype: str = "bfloat16"           # weights, activations, gradients and KV cache
    optimizer_dtype: str = "float32"  # Adam's two moments
    ref: bool = True                  # hold a frozen reference policy for the KL term
    remat: bool = False               # per-layer rematerialisation in the update's backward pass
    minibatches: int = 2              # update minibatches per pass over the rollout
    # "batch": the vision tower attends over all patches of a call, masked per image (this
    # model); "image": each image's patches only (what a per-image / varlen kernel holds)
    vision_attention: str = "batch"
    mesh: Mesh = Mesh()
    lengths: Lengths = Lengths.fixed_at(None)
    # Exact prompt slots (the sampler's padded length) instead of context + image tokens.
    prompt_len_override: Optional[int] = None

    def __post_init__(self):
        for name in ("batch", "group", "max_new", "minibatches"):
            if getattr(self, name) < 1:
                raise PlanError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("context", "images"):
            if getattr(self, name) < 0:
                raise PlanError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if min(self.image_hw) < 1:
            raise PlanError(f"--image_size must be positive, got {self.image_hw[0]}x{self.image_hw[1]}")
        for name in ("dtype", "optimizer_dtype"):
            try:
                object.__setattr__(self, name, canonical_dtype(getattr(self, name)))
            except ValueError as exc:
                raise PlanError(f"--{name}: {exc}") from None
        if self.vision_attention not in VISION_ATTENTION:
            raise PlanError(f"--vision_attention must be one of {', '.join(VISION_ATTENTION)}, "
                            f"got {self.vision_attention!r}")
        if self.rows % self.minibatches:
            raise PlanError(f"--batch x --group = {self.rows} rows do not split into --minibatches {self.minibatches}")
        if self.prompt_len_override is not None and self.prompt_len_override < 1:
            raise PlanError(f"prompt length must be >= 1, got {self.prompt_len_override}")
        if self.prompt_len < 1:
            raise PlanError("a prompt needs at least one token: raise --context or --images")
        self.check_mesh(self.mesh)

    def check_mesh(self, mesh: Mesh) -> None:
        """PlanError unless the rows and heads divide over the mesh as the sharded run splits them."""
        t = self.config.text
        if self.mb_rows % mesh.batch_shards:
            raise PlanError(f"--mesh {mesh}: data x fsdp = {mesh.batch_shards} does not divide the "
                            f"{self.mb_rows} rows of a minibatch")
        for what, n in (("attention heads", t.num_attention_heads), ("kv heads", t.num_key_value_heads),
                        ("MLP width", t.intermediate_size)):
            if n % mesh.tensor:
                raise PlanError(f"--mesh {mesh}: tensor={mesh.tensor} does not divide the {n} {what}")

    # ---- derived sizes ---------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self.batch * self.group

    @property
    def mb_rows(self) -> int:
        return self.rows // self.minibatches

    @property
    def resized_hw(self) -> Tuple[int, int]:
        p = self.processor
        try:
            return smart_resize(self.image_hw[0], self.image_hw[1], p.factor, p.min_pixels, p.max_pixels)
        except ValueError as exc:
            raise PlanError(f"--image_size: {exc}") from None

    @property
    def patches_per_image(self) -> int:
        h, w = self.resized_hw
        return (h // self.processor.patch_size) * (w // self.processor.patch_size)

    @property
    def vision_tokens_per_image(self) -> int:
        h, w = self.resized_hw
        p = self.processor.patch_size
        return num_image_tokens((1, h // p, w // p), self.processor.merge_size)

    @property
    def prompt_len(self) -> int:
        if self.prompt_len_override is not None:
            return self.prompt_len_override
        return self.context + self.images * (self.vision_tokens_per_image + MARKERS_PER_IMAGE)

    @property
    def seq_len(self) -> int:
        """Slots of one row: prompt plus the reserved completion (the contiguous cache length)."""
        return self.prompt_len + self.max_new

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)
