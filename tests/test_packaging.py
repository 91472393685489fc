"""The import-time CPU check: an extension built for x86-64-v3 refuses, with a clear ImportError, a
CPU without AVX2/FMA/F16C instead of dying of SIGILL in its first kernel (fake /proc/cpuinfo files)."""

import json
import platform

import pytest

from pyspec.ops import _check_cpu

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86_64 only")


def write(tmp_path, flags: str, needed: list[str]):
    info, cpuinfo = tmp_path / "_C_build.json", tmp_path / "cpuinfo"
    info.write_text(json.dumps({"march": "x86-64-v3", "cpu_flags": needed}))
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return info, str(cpuinfo)


def test_a_cpu_without_avx2_gets_a_clear_import_error(tmp_path):
    info, cpuinfo = write(tmp_path, "fpu sse sse2 ssse3 sse4_1 sse4_2 avx", ["avx2", "fma", "f16c"])
    with pytest.raises(ImportError, match="this CPU lacks avx2, fma, f16c. Rebuild pyspec from source"):
        _check_cpu(info, cpuinfo)


def test_a_cpu_with_the_features_and_a_native_build_pass(tmp_path):
    _check_cpu(*write(tmp_path, "fpu sse2 avx avx2 fma f16c bmi2", ["avx2", "fma", "f16c"]))
    _check_cpu(*write(tmp_path, "fpu sse2", []))  # -march=native records nothing to check
    _check_cpu(tmp_path / "missing.json", "/nonexistent")  # a CMake build: nothing recorded
