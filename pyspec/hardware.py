"""The machine a plan is tied to: its fingerprint, saved in every profile and plan, so that a plan
made on other hardware is noticed (:meth:`planner.plan.Plan.hardware_mismatch`)."""

from __future__ import annotations

import os
import platform

import torch


def hardware() -> dict:
    """What a plan depends on: CPU model, core count, torch threads, GPU (if any), torch version.

    Example:
        >>> sorted(hardware())
        ['cpu', 'cpu_count', 'gpu', 'machine', 'threads', 'torch']
    """
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__.split("+")[0],
    }
