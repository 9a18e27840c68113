"""The flags of `python -m vlmrl.core.train`: one dataclass whose every field documents itself.

`parse_args(argv)` -> `Args`; a bad value raises `UsageError` (the CLI prints it and exits 2).
No JAX here: `--help` and flag errors answer at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import List, Optional

from vlmrl.errors import UsageError


def _f(default, doc: str):
    """A dataclass field whose one-line doc is also its --help text."""
    return dataclasses.field(default=default, metadata={"help": doc})


@dataclasses.dataclass
class Args:
    env: str = _f("colors", "task: colors | count")
    model: str = _f("tiny", "built-in model preset (only tiny is built from scratch)")
    model_dir: Optional[str] = _f(None, "Hugging Face checkpoint directory instead of --model")
    steps: int = _f(200, "PPO updates to run (total, counting resumed ones)")
    seed: int = _f(0, "seeds data, init and sampling")
    batch: int = _f(8, "prompts per update")
    group: int = _f(8, "samples per prompt (group-relative advantages)")
    max_new_tokens: Optional[int] = _f(None, "completion length cap (None: the env's default)")
    temperature: float = _f(1.0, "rollout sampling temperature")
    lr: float = _f(7e-4, "AdamW learning rate")
    lr_final: float = _f(0.1, "learning rate at the last of --steps, as a fraction of --lr (cosine decay; 1: constant)")
    kl_coef: float = _f(0.01, "KL penalty weight to the frozen reference")
    ent_coef: float = _f(0.03, "entropy bonus weight (keeps exploring until the image matters)")
    epochs: int = _f(2, "passes over each rollout")
    minibatches: int = _f(2, "minibatches per pass")
    dtype: Optional[str] = _f(None, "weights, compute and KV cache: float32 | bfloat16 "
                                    "(None: bfloat16 for --model_dir, float32 for the tiny preset)")
    tui: bool = _f(False, "live dashboard")
    matrix_layer: str = _f("mean", "layer of the prompt's attention matrix (the `m` view): an index or mean")
    matrix_head: str = _f("mean", "head of the attention matrix: an index or mean")
    record: Optional[str] = _f(None, "append every event to this JSONL log (a file that is not one is refused)")
    force: bool = _f(False, "with --record: replace the file even if it is not a vlmrl log")
    ckpt: Optional[str] = _f(None, "checkpoint directory")
    ckpt_every: int = _f(50, "updates between checkpoints (and one at the end)")
    resume: bool = _f(False, "continue from the newest checkpoint in --ckpt")
    quiet: bool = _f(False, "no progress lines")
    compile_cache: Optional[str] = _f(None, "directory of JAX's persistent compilation cache "
                                            "(None: $XDG_CACHE_HOME/vlmrl/jax, else ~/.cache/vlmrl/jax)")
    no_compile_cache: bool = _f(False, "compile everything afresh: neither read nor write the compilation cache")
    mesh: Optional[str] = _f(None, "device mesh data=D,fsdp=F,tensor=T, product = device count "
                                   "(None: every device on data; an axis left out is 1, data takes the rest)")
    coordinator: Optional[str] = _f(None, "HOST:PORT of process 0 in a multi-process run, with --num_processes and "
                                          "--process_id (None: JAX's environment variables or cluster detection, "
                                          "else one process)")
    num_processes: Optional[int] = _f(None, "processes in the run (with --coordinator)")
    process_id: Optional[int] = _f(None, "this process's index, 0 .. --num_processes - 1 (with --coordinator)")


DTYPES = ("float32", "bfloat16")
MESH_AXES = ("data", "fsdp", "tensor")


def mesh_axes(spec: Optional[str]) -> dict:
    """The sizes `--mesh` names, e.g. "data=2,fsdp=2" -> {"data": 2, "fsdp": 2} (None or "":
    {}). Syntax only: whether they fit the devices is `vlmrl.core.mesh.parse_mesh`'s check."""
    sizes: dict = {}
    if spec is None or not spec.strip():
        return sizes
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq or name not in MESH_AXES:
            raise UsageError(f"--mesh {spec!r}: expected axis=size pairs over {', '.join(MESH_AXES)}, "
                             f"e.g. data=2,fsdp=2; got {part.strip()!r}")
        if name in sizes:
            raise UsageError(f"--mesh {spec!r}: axis {name} given twice")
        try:
            size = int(value.strip())
        except ValueError:
            raise UsageError(f"--mesh {spec!r}: size of {name} must be an integer, got {value.strip()!r}") from None
        if not 1 <= size <= 1 << 20:
            raise UsageError(f"--mesh {spec!r}: size of {name} must be in 1..1048576, got {size}")
        sizes[name] = size
    return sizes


def resolved_dtype(args: "Args") -> str:
    """--dtype, or its default: bfloat16 for a checkpoint, float32 for the tiny preset."""
    return args.dtype or ("bfloat16" if args.model_dir else "float32")


def layer_or_mean(value: str, flag: str) -> Optional[int]:
    """"mean" -> None, "3" -> 3; anything else is a UsageError naming the flag."""
    if value == "mean":
        return None
    try:
        index = int(value)
    except ValueError:
        raise UsageError(f"{flag} must be an index or 'mean', got {value!r}") from None
    if index < 0:
        raise UsageError(f"{flag} must be >= 0 or 'mean', got {index}")
    return index


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmrl.core.train", description="PPO on Qwen3-VL with an optional live dashboard.")
    defaults = Args()
    for f in dataclasses.fields(Args):
        flag, default = "--" + f.name, getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = {"max_new_tokens": int, "num_processes": int, "process_id": int}.get(f.name, type(default) if default is not None else str)
            p.add_argument(flag, type=kind, default=default, help=f"{f.metadata['help']} (default {default})")
    return p


def parse_args(argv: Optional[List[str]] = None) -> Args:
    """Flags -> Args; argparse exits 2 on unknown flags, `validate` raises UsageError."""
    ns = build_parser().parse_args(argv)
    args = Args(**vars(ns))
    validate(args)
    return args


def validate(args: Args) -> None:
    from vlmrl.envs.shapes import ENVS

    if args.env not in ENVS:
        raise UsageError(f"--env {args.env!r}: choose one of {sorted(ENVS)}")
    if args.model_dir is None and args.model != "tiny":
        raise UsageError(f"--model {args.model!r}: only 'tiny' is built in; pass --model_dir for a checkpoint")
    for name in ("steps", "batch", "group", "epochs", "minibatches", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.group < 2:
        raise UsageError(f"--group must be >= 2 (advantages are relative within a group), got {args.group}")
    if (args.batch * args.group) % args.minibatches:
        raise UsageError(f"--batch x --group = {args.batch * args.group} rows do not split into "
                         f"--minibatches {args.minibatches}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0 for PPO rollouts, got {args.temperature}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.lr_final <= 1:
        raise UsageError(f"--lr_final must be a fraction of --lr in [0, 1], got {args.lr_final}")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise UsageError(f"--dtype {args.dtype!r}: choose one of {', '.join(DTYPES)}")
    layer_or_mean(args.matrix_layer, "--matrix_layer")
    data = mesh_axes(args.mesh).get("data", 1)
    if (args.batch * args.group) % data or (args.batch * args.group // args.minibatches) % data:
        raise UsageError(f"--mesh data={data}: --batch x --group = {args.batch * args.group} rollout rows and "
                         f"{args.batch * args.group // args.minibatches} minibatch rows must both divide by data")
    layer_or_mean(args.matrix_head, "--matrix_head")
    if args.resume and not args.ckpt:
        raise UsageError("--resume needs --ckpt DIR")
    validate_processes(args)
    if args.model_dir is not None:
        d = args.model_dir
        if not os.path.isdir(d):
            raise UsageError(f"--model_dir {d!r} is not a directory")
        missing = [f for f in ("config.json", "tokenizer.json") if not os.path.isfile(os.path.join(d, f))]
        if missing:
            raise UsageError(f"--model_dir {d!r} is not a Qwen3-VL checkpoint: missing {', '.join(missing)}")
        if not any(f.endswith(".safetensors") for f in os.listdir(d)):
            raise UsageError(f"--model_dir {d!r} has no *.safetensors weights")
    if args.record:
        from vlmrl.instrument.record import RecordError, check_record_path

        try:
            check_record_path(args.record, args.force)
        except RecordError as exc:
            raise UsageError(str(exc)) from None


def validate_processes(args: Args) -> None:
    """--coordinator HOST:PORT --num_processes N --process_id I: all three or none."""
    given = [f"--{n}" for n in ("coordinator", "num_processes", "process_id") if getattr(args, n) is not None]
    if not given:
        return
    if len(given) < 3:
        raise UsageError(f"{' '.join(given)}: a multi-process run needs all of --coordinator HOST:PORT, "
                         f"--num_processes N and --process_id I")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {args.coordinator!r}: expected HOST:PORT (a port 1-65535)")
    if args.num_processes < 1:
        raise UsageError(f"--num_processes must be >= 1, got {args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process_id must be in 0 .. {args.num_processes - 1}, got {args.process_id}")
