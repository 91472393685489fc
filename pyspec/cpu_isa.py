"""The CPU kernel tier: which vector kernels pyspec's CPU ops run, detected at run time by ``cpuid``.

Tiers, lowest first: ``generic``, ``avx2`` (AVX2, FMA, F16C: what the extension is compiled for) and
``avx512_vnni`` (AVX-512 F/BW/VL/DQ with VNNI: Intel Cascade Lake and later, AMD Zen 4 and later). The
highest tier the CPU (and its OS) supports runs by default. Every tier gives the same bits, so a tier
is a speed choice only: tests run each available tier and compare. ``PYSPEC_CPU_ISA=avx2`` in the
environment lowers the tier at import (an unknown or unsupported tier there is an error at import).
Today the tiers differ in the q8 linear (:func:`pyspec.packed_ops.linear_q8`); the other kernels are AVX2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from pyspec import _C  # noqa: F401  (registers torch.ops.pyspec.*)

__all__ = ["CPU_ISAS", "cpu_isa", "detected_cpu_isa", "set_cpu_isa", "available_cpu_isas", "use_cpu_isa"]

CPU_ISAS = ("generic", "avx2", "avx512_vnni")


def cpu_isa() -> str:
    """The tier the CPU kernels run now.

    Example:
        >>> cpu_isa() in CPU_ISAS
        True
    """
    return torch.ops.pyspec.cpu_isa()


def detected_cpu_isa() -> str:
    """The highest tier this CPU and build run (``cpuid``, including the OS's saved register state)."""
    return torch.ops.pyspec.cpu_isa_detected()


def available_cpu_isas() -> list[str]:
    """Every tier this machine runs, lowest first, from ``avx2`` (or ``generic`` on other CPUs) up."""
    top = CPU_ISAS.index(detected_cpu_isa())
    return [isa for isa in CPU_ISAS[: top + 1] if isa != "generic" or top == 0]


def set_cpu_isa(isa: str) -> str:
    """Runs the kernels of tier ``isa`` from now on (process-wide); returns it. A tier not in
    :func:`available_cpu_isas` or an unknown name is a ``ValueError``.

    Example:
        >>> previous = cpu_isa()
        >>> set_cpu_isa("avx2") if "avx2" in available_cpu_isas() else "avx2"
        'avx2'
        >>> _ = set_cpu_isa(previous)
    """
    if isa not in CPU_ISAS:
        raise ValueError(f"unknown CPU kernel tier {isa!r}: one of {', '.join(CPU_ISAS)}")
    if isa not in available_cpu_isas():
        tiers = ", ".join(available_cpu_isas())
        raise ValueError(f"this CPU and build run the kernel tiers {tiers}, not {isa}")
    return torch.ops.pyspec.set_cpu_isa(isa)


@contextlib.contextmanager
def use_cpu_isa(isa: str) -> Iterator[str]:
    """Runs the kernels of tier ``isa`` inside the block, then restores the previous tier.

    Example:
        >>> with use_cpu_isa(available_cpu_isas()[0]) as isa:
        ...     cpu_isa() == isa
        True
    """
    previous = cpu_isa()
    set_cpu_isa(isa)
    try:
        yield isa
    finally:
        set_cpu_isa(previous)


if os.environ.get("PYSPEC_CPU_ISA"):
    try:
        set_cpu_isa(os.environ["PYSPEC_CPU_ISA"])
    except ValueError as e:
        raise ImportError(f"PYSPEC_CPU_ISA={os.environ['PYSPEC_CPU_ISA']}: {e}") from None
