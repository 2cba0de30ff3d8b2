"""The machine code of every CUDA kernel instance the CuPy backend launches, for reading offline.

    python benchmarks/gpu_sass.py OUTFILE [--arch sm_90]

Compiles each kernel file with ``nvcc`` for one architecture (the template
instances the backend asks NVRTC for, ``-ftz=true`` as CuPy passes) and writes
``cuobjdump -sass -res-usage`` of the result to OUTFILE: registers, spills,
and the instructions of the time loops (are the loads 16 bytes wide, did an
array go to local memory, how long is a step's dependency chain). Needs
``nvcc`` and ``cuobjdump`` (a CUDA toolkit; no GPU). ``benchmarks/gpu_check.sh``
runs it into OUTDIR/sass.txt. Exit status 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outfile", type=Path)
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nvcc", "cuobjdump") if shutil.which(tool) is None]
    if missing:
        print(f"gpu_sass: {' and '.join(missing)} not found (a CUDA toolkit provides them)", file=sys.stderr)
        return 2

    from gru.backends.cupy import _kernels

    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for kernel_file in _kernels.KERNEL_FILES:
            unit = Path(tmp) / f"{kernel_file.path.stem}_instances.cu"
            unit.write_text(_kernels.instantiation_unit(kernel_file))
            cubin = unit.with_suffix(".cubin")
            command = ["nvcc", "-std=c++17", f"-arch={args.arch}", "-ftz=true", "-cubin"]
            command += [f"-I{_kernels.KERNEL_DIR}", str(unit), "-o", str(cubin)]
            built = subprocess.run(command, capture_output=True, text=True)
            if built.returncode != 0:
                print(f"gpu_sass: nvcc failed on {kernel_file.filename}:\n{built.stderr}", file=sys.stderr)
                return 1
            dump = subprocess.run(["cuobjdump", "-sass", "-res-usage", str(cubin)], capture_output=True, text=True)
            sections.append(f"==== {kernel_file.filename} ({args.arch})\n{dump.stdout}{dump.stderr}")
            print(f"{kernel_file.filename}: {len(kernel_file.names)} instances", file=sys.stderr)
    args.outfile.write_text("".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
