"""Accelerators the planner knows: memory and memory bandwidth per device.

Figures are the vendors' own, in decimal units as they print them (80 GB = 80e9 bytes,
which is below what the cards report, so a plan that fits here fits there):

- NVIDIA H100 SXM5 80GB: 80 GB HBM3, 3.35 TB/s (NVIDIA H100 Tensor Core GPU datasheet)
- NVIDIA H200 SXM: 141 GB HBM3e, 4.8 TB/s (NVIDIA H200 Tensor Core GPU product page)
- NVIDIA A100 SXM 80GB: 80 GB HBM2e, 2,039 GB/s (NVIDIA A100 datasheet)
- NVIDIA A100 SXM 40GB: 40 GB HBM2, 1,555 GB/s (NVIDIA A100 datasheet)
- NVIDIA L4: 24 GB GDDR6, 300 GB/s (NVIDIA L4 Tensor Core GPU datasheet)
- Google Cloud TPU v5e: 16 GB HBM2, 819 GB/s per chip (cloud.google.com/tpu/docs/v5e)
- Google Cloud TPU v5p: 95 GB HBM2e, 2,765 GB/s per chip (cloud.google.com/tpu/docs/v5p)
- Google Cloud TPU v6e (Trillium): 32 GB HBM, 1,640 GB/s per chip (cloud.google.com/tpu/docs/v6e)

docs/memory_planner.md repeats the table with the same sources.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

GB = 10 ** 9


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    label: str
    memory_bytes: int
    bandwidth_bytes_s: int
    source: str


DEVICES: Dict[str, Device] = {d.name: d for d in (
    Device("h100-80", "NVIDIA H100 SXM5 80GB", 80 * GB, 3350 * GB, "NVIDIA H100 datasheet"),
    Device("h200", "NVIDIA H200 SXM 141GB", 141 * GB, 4800 * GB, "NVIDIA H200 product page"),
    Device("a100-80", "NVIDIA A100 SXM 80GB", 80 * GB, 2039 * GB, "NVIDIA A100 datasheet"),
    Device("a100-40", "NVIDIA A100 SXM 40GB", 40 * GB, 1555 * GB, "NVIDIA A100 datasheet"),
    Device("l4", "NVIDIA L4 24GB", 24 * GB, 300 * GB, "NVIDIA L4 datasheet"),
    Device("tpu-v5e", "Google TPU v5e", 16 * GB, 819 * GB, "cloud.google.com/tpu/docs/v5e"),
    Device("tpu-v5p", "Google TPU v5p", 95 * GB, 2765 * GB, "cloud.google.com/tpu/docs/v5p"),
    Device("tpu-v6e", "Google TPU v6e (Trillium)", 32 * GB, 1640 * GB, "cloud.google.com/tpu/docs/v6e"),
)}


def get_device(name: str) -> Device:
    try:
        return DEVICES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}") from None
