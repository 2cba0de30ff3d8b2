"""The CUDA sources: listed, self-contained, shipped, and compiled with nvcc and NVRTC for sm_80 and sm_90.

Compiling fails the test on errors, warnings, register spills or stack frames.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gru
from gru.backends.cupy import _kernels

ARCHES = ("sm_80", "sm_90")


def test_every_kernel_file_is_listed_and_self_contained():
    on_disk = {p.name for p in _kernels.KERNEL_DIR.glob("*.cu")}
    assert on_disk == {f.filename for f in _kernels.KERNEL_FILES}
    for f in _kernels.KERNEL_FILES:
        text = _kernels.source(f.filename)
        directives = [line for line in text.splitlines() if line.startswith(("#include", "#pragma once"))]
        assert directives == []  # NVRTC gets one self-contained source
        assert "namespace gru" in text  # the header was spliced in
        for name in f.names:
            assert name.split("<")[0] in text


def test_kernel_files_ship_inside_the_package():
    """scikit-build-core's wheel.packages = ["gru"] takes every file under gru/, .cu and .cuh included."""
    tomllib = pytest.importorskip("tomllib")

    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "gru" in config["tool"]["scikit-build"]["wheel"]["packages"]
    assert _kernels.KERNEL_DIR.is_relative_to(Path(gru.__file__).parent)
    assert config["project"]["entry-points"]["gru.backends"]["cupy"] == "gru.backends.cupy:CupyBackend"
    extras = config["project"]["optional-dependencies"]
    assert any(r.startswith("cupy-cuda12x") for r in extras["cuda12"])
    assert any(r.startswith("cupy-cuda13x") for r in extras["cuda13"])


# -- compiling with nvcc and NVRTC ---------------------------------------------------------------

PTXAS_ENTRY = re.compile(
    r"Compiling entry function '(?P<name>\S+)' for '(?P<arch>sm_\d+)'.*?"
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads.*?"
    r"Used (?P<registers>\d+) registers",
    re.S,
)


def ptxas_report(log: str) -> list[dict]:
    """One row per kernel: name, arch, registers, stack frame and spill bytes (from --ptxas-options=-v)."""
    return [{k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()} for m in PTXAS_ENTRY.finditer(log)]


def nvcc_compile(kernel_file: _kernels.KernelFile, arch: str, workdir: Path) -> tuple[int, str]:
    source = workdir / f"{kernel_file.path.stem}_{arch}.cu"
    source.write_text(_kernels.instantiation_unit(kernel_file))
    command = [
        "nvcc",
        "-std=c++17",
        f"-arch={arch}",
        "--ptxas-options=-v",
        f"-I{_kernels.KERNEL_DIR}",
        "-c",
        str(source),
        "-o",
        str(source.with_suffix(".o")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def find_nvrtc() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel, CUDA_HOME/CUDA_PATH or the loader's path."""
    candidates = []
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cuda_nvrtc"):
            candidates += glob.glob(os.path.join(entry, "nvidia", sub, "lib", "libnvrtc.so*"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates += glob.glob(os.path.join(os.environ[var], "lib64", "libnvrtc.so*"))
    candidates += glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")
    candidates = [c for c in candidates if "builtins" not in c and "alt" not in os.path.basename(c)]
    if candidates:
        return sorted(candidates)[0]
    return ctypes.util.find_library("nvrtc")


def nvrtc_compile(library: str, kernel_file: _kernels.KernelFile, arch: str) -> tuple[int, str, dict[str, str]]:
    """Compile the runtime source exactly as CuPy does (name expressions), for ``arch``, with ptxas's report."""
    nvrtc = ctypes.CDLL(library)
    program = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(
        ctypes.byref(program),
        _kernels.source(kernel_file.filename).encode(),
        kernel_file.filename.encode(),
        0,
        None,
        None,
    )
    assert status == 0, f"nvrtcCreateProgram: {status}"
    try:
        for name in kernel_file.names:
            assert nvrtc.nvrtcAddNameExpression(program, name.encode()) == 0
        options = [*_kernels.NVRTC_OPTIONS, f"--gpu-architecture={arch}", "-ftz=true", "--ptxas-options=-v"]
        encoded = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = nvrtc.nvrtcCompileProgram(program, len(options), encoded)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        lowered = {}
        if status == 0:
            for name in kernel_file.names:
                mangled = ctypes.c_char_p()
                if nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(mangled)) == 0:
                    lowered[name] = mangled.value.decode()
        return status, log.value.decode(errors="replace"), lowered
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every (file, arch) through nvcc and, where present, NVRTC, concurrently (the test stays well under a minute)."""
    workdir = tmp_path_factory.mktemp("nvcc")
    nvrtc = find_nvrtc()
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for f in _kernels.KERNEL_FILES:
            for arch in ARCHES:
                if shutil.which("nvcc"):
                    jobs["nvcc", f.filename, arch] = pool.submit(nvcc_compile, f, arch, workdir)
                if nvrtc:
                    jobs["nvrtc", f.filename, arch] = pool.submit(nvrtc_compile, nvrtc, f, arch)
        return {key: job.result() for key, job in jobs.items()}


def _check_ptxas(log: str, kernel_file: _kernels.KernelFile, arch: str) -> None:
    report = ptxas_report(log)
    assert len(report) == len(kernel_file.names), f"ptxas reported {len(report)} kernels:\n{log}"
    for row in report:
        assert row["arch"] == arch
        assert row["stores"] == 0 and row["loads"] == 0, f"register spills in {row['name']} for {arch}: {row}"
        assert row["stack"] == 0, f"local memory (stack frame) in {row['name']} for {arch}: {row}"
        assert row["registers"] <= 255


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kernel_file", _kernels.KERNEL_FILES, ids=lambda f: f.filename)
def test_nvcc_compiles_without_errors_warnings_or_spills(compiled, kernel_file, arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    status, log = compiled["nvcc", kernel_file.filename, arch]
    assert status == 0, log
    assert "warning" not in log.lower(), log
    _check_ptxas(log, kernel_file, arch)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kernel_file", _kernels.KERNEL_FILES, ids=lambda f: f.filename)
def test_nvrtc_compiles_the_runtime_source_as_cupy_does(compiled, kernel_file, arch):
    if find_nvrtc() is None:
        pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    status, log, lowered = compiled["nvrtc", kernel_file.filename, arch]
    assert status == 0, log
    assert "warning" not in log.lower(), log
    assert set(lowered) == set(kernel_file.names), "every name expression must resolve to a kernel"
    _check_ptxas(log, kernel_file, arch)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_gpu_sass_script_compiles_every_kernel_file_and_disassembles_it(tmp_path, monkeypatch):
    """benchmarks/gpu_sass.py with a stand-in cuobjdump (no GPU toolkit's disassembler here): one section per file."""
    fake = tmp_path / "bin" / "cuobjdump"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a; do last=$a; done\necho "sass of $(basename $last): $(wc -c < $last) bytes"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    script = Path(__file__).parents[2] / "benchmarks" / "gpu_sass.py"
    outfile = tmp_path / "sass.txt"
    done = subprocess.run([sys.executable, str(script), str(outfile)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    sections = outfile.read_text().split("==== ")[1:]
    assert [s.split(" ")[0] for s in sections] == [f.filename for f in _kernels.KERNEL_FILES]
    for section in sections:
        size = int(re.search(r"sass of \S+\.cubin: (\d+) bytes", section).group(1))
        assert size > 1000  # a real cubin reached the disassembler


def test_gpu_sass_script_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither nvcc nor cuobjdump
    script = Path(__file__).parents[2] / "benchmarks" / "gpu_sass.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out.txt")], capture_output=True, text=True)
    assert done.returncode == 2 and "nvcc and cuobjdump not found" in done.stderr
