"""Offline synthetic vision tasks drawn with Pillow: name the colour, count the shapes.

No downloads. Every example is a pure function of (seed, index): the generator for example
i of seed s is `default_rng([s, i])`, so a batch is reproducible on its own. Answers cycle
with the index, so any run of consecutive examples is class-balanced: a batch's mean
reward then measures accuracy, not which classes happened to be drawn.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import List

import numpy as np
from PIL import Image, ImageDraw

from vlmrl.envs.base import Example, answer_reward

# Far apart in RGB so a linear patch embedding separates them at once. The colour task uses
# the first four by default (purple/blue and white/yellow are the closest pairs); the
# count task paints its shapes from all six.
COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "white": (240, 240, 240),
}
KINDS = ("square", "circle", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Dark grey with faint noise, so no two images are pixel-identical."""
    base = rng.integers(20, 60)
    noise = rng.integers(-8, 9, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, kind: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


class ColorsEnv:
    """One shape of one colour on a dark background: "what colour is the shape ?"."""

    name = "colors"
    max_new_tokens = 2
    question = "what colour is the shape ?"

    def __init__(self, image_size: int = 64, colors=("red", "green", "blue", "yellow")):
        unknown = [c for c in colors if c not in COLORS]
        if unknown or len(colors) < 2:
            raise ValueError(f"colors must be >= 2 names from {sorted(COLORS)}, got {list(colors)}")
        self.image_size = image_size
        self.answers = tuple(colors)

    def examples(self, seed: int, start: int, n: int) -> List[Example]:
        out = []
        for i in range(start, start + n):
            rng = np.random.default_rng([seed, i])
            color = self.answers[(seed + i) % len(self.answers)]  # balanced: each colour once per len(answers)
            img = _background(rng, self.image_size)
            s = self.image_size
            side = int(rng.integers(s // 2, (7 * s) // 8))  # big: most patches see the colour
            x0, y0 = (int(v) for v in rng.integers(0, s - side, size=2))
            _draw(ImageDraw.Draw(img), KINDS[int(rng.integers(len(KINDS)))], (x0, y0, x0 + side, y0 + side),
                  COLORS[color])
            out.append(Example(np.asarray(img, np.uint8), self.question, color))
        return out

    def reward(self, completion: str, example: Example) -> float:
        return answer_reward(completion, example)


class CountEnv:
    """1 to max_count small shapes in separate grid cells: "how many shapes are there ?"."""

    name = "count"
    max_new_tokens = 2
    question = "how many shapes are there ?"

    def __init__(self, image_size: int = 64, max_count: int = 4):
        if not 1 <= max_count <= 4:
            raise ValueError(f"max_count must be in [1, 4] (a 2x2 grid of cells), got {max_count}")
        self.image_size = image_size
        self.max_count = max_count
        self.answers = NUMBER_WORDS[1:max_count + 1] + tuple(str(k) for k in range(1, max_count + 1))

    def examples(self, seed: int, start: int, n: int) -> List[Example]:
        out = []
        cell = self.image_size // 2
        for i in range(start, start + n):
            rng = np.random.default_rng([seed, i])
            k = 1 + (seed + i) % self.max_count  # balanced over consecutive indices
            img = _background(rng, self.image_size)
            draw = ImageDraw.Draw(img)
            for c in rng.permutation(4)[:k]:  # one shape per cell: they never overlap
                side = int(rng.integers(cell // 3, cell - 4))
                ox = (int(c) % 2) * cell + int(rng.integers(2, cell - side - 1))
                oy = (int(c) // 2) * cell + int(rng.integers(2, cell - side - 1))
                color = list(COLORS.values())[int(rng.integers(len(COLORS)))]
                _draw(draw, KINDS[int(rng.integers(len(KINDS)))], (ox, oy, ox + side, oy + side), color)
            out.append(Example(np.asarray(img, np.uint8), self.question, NUMBER_WORDS[k], aliases=(str(k),)))
        return out

    def reward(self, completion: str, example: Example) -> float:
        return answer_reward(completion, example)


# Read-only: the registry is shared by every run in the process.
ENVS = MappingProxyType({"colors": ColorsEnv, "count": CountEnv})


def make_env(name: str, **kwargs):
    """An environment by name; ValueError naming the choices otherwise."""
    try:
        cls = ENVS[name]
    except KeyError:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(ENVS)}") from None
    return cls(**kwargs)
