"""csrc/kernels/ is torch-free: g++ and nvcc build it alone, so device code never rots without a GPU."""

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "kernels"
CUDA_SOURCES = sorted(KERNELS.glob("*.cu"))


def test_kernels_include_no_torch_header():
    for path in KERNELS.iterdir():
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', path.read_text())
        torchy = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10", "pybind11", "Python.h")]
        assert not torchy, f"{path.name} includes {torchy}"


def test_cpu_kernels_compile_alone_with_gxx(tmp_path):
    """The CPU templates build with g++ alone, for float and bfloat16, with and without AVX (the
    portable fallbacks), and for AVX2 with the AVX-512 kernels compiled by target attribute."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler")
    unit = tmp_path / "cpu_kernels.cpp"
    unit.write_text(
        '#include "tree_attention.h"\n#include "paged_kv.h"\n#include "linear.h"\n#include "norm.h"\n'
        '#include "linear_packed.h"\n#include "linear_q8.h"\n'
        "using namespace pyspec;\n"
        "template void cpu::run_attention_item<float>(const cpu::TreeAttentionParams<float>&,"
        " const cpu::AttentionItem&, cpu::Partials&);\n"
        "template void cpu::run_attention_item<bf16>(const cpu::TreeAttentionParams<bf16>&,"
        " const cpu::AttentionItem&, cpu::Partials&);\n"
        "template void cpu::linear<float>(const cpu::LinearParams<float>&, int64_t, int64_t);\n"
        "template void cpu::linear<bf16>(const cpu::LinearParams<bf16>&, int64_t, int64_t);\n"
        "template void cpu::rms_norm<bf16>(const bf16*, const bf16*, const bf16*, float, bf16*, bf16*,"
        " int64_t, int64_t, int64_t);\n"
        "template void cpu::silu_mul<float>(const float*, float*, int64_t, int64_t, int64_t);\n"
        "template void cpu::rope_kv_append<bf16>(const PagedKV&, const PageTables&, const int32_t*,"
        " const int32_t*, const bf16*, const int64_t*, const float*, int64_t, bf16*, bf16*, bf16*,"
        " int64_t, int64_t);\n"
        "void packed(const cpu::PackedLinearParams& p, const std::vector<cpu::PackedPart>& parts,"
        " const std::vector<cpu::PackedGroup>& groups, const int64_t* ids, float* out) {"
        " cpu::linear_packed(p, parts, groups, 0, 1); cpu::dequant_rows(parts[0].data, 14, 256, ids, 1, out);"
        " cpu::Q8Rows xq(1, 256); cpu::quantize_row_q8(out, 0, xq);"
        " cpu::linear_q8(xq, nullptr, out, 1, 1, parts, groups, 0, 1, cpu::active_isa()); }\n"
    )
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    for arch in ([], ["-march=x86-64-v3"] if x86 else [], ["-march=native"]):  # v3: the default build
        subprocess.run(
            [gxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-Wno-psabi", *arch, "-c", "-I", str(KERNELS)]
            + [str(unit), "-o", str(tmp_path / "cpu.o")],
            check=True,
            capture_output=True,
            text=True,
        )


@pytest.mark.skipif(
    shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
    reason="nvcc not installed",
)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_kernels_compile_with_nvcc_alone(source, tmp_path):
    """Each .cu instantiates every kernel for float, bfloat16 and float16; compiled for sm_90."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    result = subprocess.run(
        [
            nvcc,
            "-std=c++17",
            "-arch=sm_90",
            "-O2",
            "-Werror",
            "all-warnings",
            "-c",
            str(source),
            "-o",
            str(tmp_path / (source.stem + ".o")),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    symbols = subprocess.run(
        ["nm", "-C", str(tmp_path / (source.stem + ".o"))], capture_output=True, text=True
    ).stdout
    launchers = [line for line in symbols.splitlines() if "pyspec::cuda::launch_" in line]
    for dtype in ("float", "__nv_bfloat16", "__half"):
        assert any(f"<{dtype}>" in line for line in launchers), f"{source.name} lacks a {dtype} instantiation"
