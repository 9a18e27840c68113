"""`python -m vlmrl.plan`: will this VLM RL run fit, and on how many devices?

  python -m vlmrl.plan --preset 2b --batch 8 --group 8 --context 512 --max_new 512 \
      --images 1 --image_size 448 --device h100-80 [--mesh fsdp=4] [--remat] [--json]

Prints a table (what, bytes, per device, share of the per-device peak) and, with --json,
one JSON object on the last line. Bad values are one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from vlmrl.plan.devices import DEVICES, get_device
from vlmrl.plan.lengths import Lengths, LengthsError
from vlmrl.plan.planner import DEFAULT_USABLE, make_plan
from vlmrl.plan.spec import Mesh, PlanError, RunSpec


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise PlanError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m vlmrl.plan", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=("tiny", "2b", "4b", "8b"), default=None, help="built-in model (default 2b)")
    src.add_argument("--model_dir", help="a checkpoint directory: config.json (and preprocessor_config.json)")
    p.add_argument("--batch", type=int, default=8, help="prompts per update (default 8)")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--context", type=int, default=512, help="text tokens per prompt (default 512)")
    p.add_argument("--max_new", type=int, default=512, help="completion tokens reserved per sample (default 512)")
    p.add_argument("--images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--image_size", default="448", help="PX or HxW of each image before resizing (default 448)")
    p.add_argument("--min_pixels", type=int, default=None, help="the processor's min_pixels (default: its own)")
    p.add_argument("--max_pixels", type=int, default=None, help="the processor's max_pixels (default: its own)")
    p.add_argument("--dtype", default="bfloat16", help="weights, activations, gradients, KV (default bfloat16)")
    p.add_argument("--optimizer_dtype", default="float32", help="Adam's moments (default float32)")
    p.add_argument("--ref", action=argparse.BooleanOptionalAction, default=True,
                   help="hold a frozen reference policy (default on)")
    p.add_argument("--remat", action="store_true", help="per-layer rematerialisation in the update")
    p.add_argument("--minibatches", type=int, default=2, help="update minibatches per pass (default 2)")
    p.add_argument("--vision_attention", default="batch", choices=("batch", "image"),
                   help="vision attention over all patches of a call (this model) or per image (default batch)")
    p.add_argument("--mesh", default="data=1,fsdp=1,tensor=1", help="data=..,fsdp=..,tensor=..")
    p.add_argument("--device", default="h100-80", help=f"one of {', '.join(DEVICES)} (default h100-80)")
    p.add_argument("--lengths", default="fixed",
                   help="completion lengths: fixed, fixed:N, uniform:MIN:MAX, log:RUN.jsonl (default fixed)")
    p.add_argument("--usable", type=float, default=DEFAULT_USABLE,
                   help=f"share of device memory the run may fill (default {DEFAULT_USABLE})")
    p.add_argument("--json", action="store_true", help="also print the plan as one JSON object on the last line")
    return p


def _image_hw(text: str):
    parts = str(text).lower().split("x")
    try:
        sizes = [int(x) for x in parts]
    except ValueError:
        raise PlanError(f"--image_size {text!r}: expected PX or HxW") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise PlanError(f"--image_size {text!r}: expected positive PX or HxW")
    return (sizes[0], sizes[-1])


def spec_from_args(ns) -> RunSpec:
    from vlmrl.models.qwen3vl.config import Qwen3VLConfig
    from vlmrl.models.qwen3vl.processor import ImageProcessorConfig

    try:
        if ns.model_dir:
            d = ns.model_dir
            if not os.path.isdir(d):
                raise PlanError(f"--model_dir {d!r} is not a directory")
            config = Qwen3VLConfig.from_json_file(os.path.join(d, "config.json"))
            processor = ImageProcessorConfig.from_pretrained(d)
        else:
            config = Qwen3VLConfig.preset(ns.preset or "2b")
            processor = ImageProcessorConfig(patch_size=config.vision.patch_size,
                                             merge_size=config.vision.spatial_merge_size,
                                             temporal_patch_size=config.vision.temporal_patch_size)
        processor = processor.replace(min_pixels=ns.min_pixels, max_pixels=ns.max_pixels)
    except PlanError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = f"--model_dir {ns.model_dir!r}" if ns.model_dir else "config"
        raise PlanError(f"{where}: {type(exc).__name__}: {exc}") from None
    try:
        lengths = Lengths.parse(ns.lengths)
    except LengthsError as exc:
        raise PlanError(str(exc)) from None
    return RunSpec(config=config, batch=ns.batch, group=ns.group, context=ns.context, max_new=ns.max_new,
                   images=ns.images, image_hw=_image_hw(ns.image_size), processor=processor, dtype=ns.dtype,
                   optimizer_dtype=ns.optimizer_dtype, ref=ns.ref, remat=ns.remat, minibatches=ns.minibatches,
                   vision_attention=ns.vision_attention,
                   mesh=Mesh.parse(ns.mesh), lengths=lengths)


def fmt_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def table(plan: dict) -> str:
    """The readable report: what, bytes (whole run), per device, share of the per-device peak."""
    shards = {"param": _shards(plan, ("fsdp", "tensor")), "rows": _shards(plan, ("data", "fsdp", "tensor"))}
    peak = plan["per_device_bytes"]
    rows = [
        ("policy weights", plan["weights_bytes"], plan["weights_bytes"] / shards["param"]),
        ("reference policy", plan["reference_bytes"], plan["reference_bytes"] / shards["param"]),
        ("optimizer (Adam mu, nu)", plan["optimizer_bytes"], plan["optimizer_bytes"] / shards["param"]),
        ("gradients (update)", plan["grads_bytes"], plan["grads_bytes"] / shards["param"]),
        ("KV cache, contiguous", plan["kv_bytes"], plan["kv_bytes"] / shards["rows"]),
        (f"KV cache, {plan['kv_page_tokens']}-token pages", plan["kv_bytes_paged"], None),
        ("KV pages, prompt shared in group", plan["kv_bytes_paged_shared_prompt"], None),
        ("activations (update, " + ("remat" if plan["remat"] else "no remat") + ")", plan["activation_bytes"], None),
        ("  of which attention scores", plan["attention_scores_bytes_avoided"], None),
        ("phase: rollout", None, plan["rollout_bytes"]),
        ("phase: scoring", None, plan["score_bytes"]),
        ("phase: update", None, plan["update_bytes"]),
        ("resident (weights+ref+optimizer)", None, plan["resident_bytes"]),
        ("PEAK per device", None, peak),
    ]
    lines = [f"{plan['model']}: {plan['params_total']:,} parameters ({plan['params_text']:,} text, "
             f"{plan['params_vision']:,} vision)",
             f"rows {plan['batch']}x{plan['group']} = {plan['rows']}, {plan['minibatches']} minibatches; prompt "
             f"{plan['prompt_len']} tokens ({plan['context']} text + {plan['images']} image(s) x "
             f"{plan['vision_tokens_per_image']} vision tokens, {plan['image_resized']} px); +{plan['max_new']} new; "
             f"lengths {plan['lengths']} (mean {plan['mean_completion']})",
             f"dtype {plan['dtype']}, optimizer {plan['optimizer_dtype']}, mesh {plan['mesh']}, "
             f"device {plan['device_label']} ({fmt_bytes(plan['device_memory_bytes'])}, usable "
             f"{fmt_bytes(plan['usable_bytes'])})", ""]
    lines.append(f"{'what':<36}{'bytes':>14}{'per device':>14}{'share':>8}")
    for what, total, dev in rows:
        share = f"{100 * dev / peak:.1f}%" if dev is not None and peak else ""
        lines.append(f"{what:<36}{fmt_bytes(total) if total is not None else '':>14}"
                     f"{fmt_bytes(dev) if dev is not None else '':>14}{share:>8}")
    lines.append("")
    verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
    need = (f"{plan['devices_needed']} device(s) ({plan['mesh_needed']})" if plan["devices_needed"]
            else "no fsdp split of these rows fits")
    lines.append(f"{verdict} on {plan['devices']} x {plan['device']} (peak in the {plan['peak_phase']} phase); "
                 f"devices needed: {need}")
    lines.append(f"decode step floor (weights + used KV read once at {plan['device_bandwidth_bytes_s'] / 1e9:.0f} "
                 f"GB/s): {plan['decode_step_seconds_min'] * 1e3:.2f} ms")
    for s in plan["suggestions"]:
        lines.append(f"  try {s['change']}: {fmt_bytes(s['per_device_bytes'])} per device"
                     f"{' (fits)' if s['fits'] else ''}")
    return "\n".join(lines)


def _shards(plan: dict, axes) -> int:
    sizes = dict(part.split("=") for part in plan["mesh"].split(","))
    n = 1
    for a in axes:
        n *= int(sizes[a])
    return n


def main(argv: Optional[List[str]] = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
        spec = spec_from_args(ns)
        device = get_device(ns.device)
        plan = make_plan(spec, device, ns.usable)
    except (PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(plan))
    if ns.json:
        print(json.dumps(plan, sort_keys=True))
    return 0
