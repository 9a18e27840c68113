"""The environment protocol: a batch of image prompts in, exact rewards for completions out.

An environment is deterministic per seed: `examples(seed, start, n)` returns the same n
examples for the same arguments, whatever was drawn before; `reward` scores one
completion text against one example. Environments know nothing of models or tokenizers:
`vlmrl.core.rollout.make_batch` turns examples into sampler inputs with the Qwen3-VL
processor (chat prompt, image pads, pixel patches).
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Protocol, Sequence

import numpy as np

@dataclasses.dataclass
class Example:
    """One task instance: an RGB image, the question, and the exact answer word."""

    image: np.ndarray  # uint8 [H, W, 3]
    question: str
    answer: str
    # other words that count as the answer (e.g. "3" for "three")
    aliases: tuple = ()


@dataclasses.dataclass
class PromptBatch:
    """Host-side inputs for one rollout. Prompts are unpadded id lists (the sampler pads)."""

    prompt_ids: List[np.ndarray]
    pixel_values: np.ndarray  # float32 [N_patches, C * T * P * P], processor (merge-window) order
    image_grid_thw: np.ndarray  # int64 [n_images, 3]
    examples: List[Example]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def repeat(self, group: int) -> "PromptBatch":
        """Each prompt `group` times in a row (samples of one prompt are adjacent)."""
        idx = np.repeat(np.arange(len(self)), group)
        per = [int(np.prod(g)) for g in self.image_grid_thw]
        starts = np.concatenate([[0], np.cumsum(per)])
        pixels = np.concatenate([self.pixel_values[starts[i]:starts[i + 1]] for i in idx])
        return PromptBatch([self.prompt_ids[i] for i in idx], pixels, self.image_grid_thw[idx],
                           [self.examples[i] for i in idx])


class Env(Protocol):
    """What the trainer needs from a task."""

    name: str
    answers: tuple  # every answer word (the tokenizer's vocabulary must hold them)
    max_new_tokens: int

    def examples(self, seed: int, start: int, n: int) -> List[Example]: ...

    def reward(self, completion: str, example: Example) -> float: ...


# ---- rewards --------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def answer_reward(completion: str, example: Example) -> float:
    """1.0 for exactly the answer word (then a stop), 0.5 for the answer followed by more
    words, 0.0 otherwise. `completion` is the decoded text without its stop token; any
    other special token in it (e.g. <|box_start|>) reads as words, so it earns nothing.

    The half credit teaches the second token something (stop) instead of leaving it as
    noise that shares the answer's advantage.
    """
    words = _WORD.findall(completion.lower())
    if not words or not (words[0] == example.answer or words[0] in example.aliases):
        return 0.0
    return 1.0 if len(words) == 1 else 0.5


def rewards_for(env: Env, completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
    return np.asarray([env.reward(c, e) for c, e in zip(completions, examples)], np.float32)
