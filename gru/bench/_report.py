"""The report: the terminal table and the plot."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np

from gru.bench._cases import BUSY_LOAD_CPUS
from gru.bench._run import _rounds


# -- output ----------------------------------------------------------------------------------------
def _describe_machine(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    cores = f"{m['logical_cpus']} logical CPUs"
    if m.get("physical_cores"):
        cores += f" / {m['physical_cores']} cores"
    threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    mode = ", training (forward + backward)" if s.get("mode") == "training" else ""
    return f"{m['cpu']} ({cores}), {threads}, {s['dtype']}{mode}"


def format_table(report: dict[str, Any]) -> str:
    """The terminal report: machine header, one row per (shape, implementation), geometric means."""
    m, s, peers = report["machine"], report["settings"], report["peers"]
    v = m["versions"]
    lines = [
        f"gru bench: {_describe_machine(report)}; median of up to {_count(s['repeats'], 'call')}"
        f" in {_count(_rounds(s['repeats']), 'interleaved round')}, after {_count(s['warmup'], 'warm-up call')}",
        "  "
        + " · ".join(f"{k} {v[k] or '-'}" for k in ("gru", "numpy", "scipy", "torch", "onnxruntime"))
        + f" · Python {m['python']}",
    ]
    pools: dict[str, list[int]] = {}
    for pool in report.get("thread_pools") or []:
        pools.setdefault(pool["internal_api"], []).append(pool["num_threads"])
    if pools:
        capped = [
            f"{api} {'/'.join(map(str, sorted(set(n))))}" + (f" ({len(n)} libraries)" if len(n) > 1 else "")
            for api, n in pools.items()
        ]
        lines.append("  threads of the pools loaded at start (threadpoolctl): " + ", ".join(capped))
    kernels = sorted(
        {
            f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('architecture')} kernels"
            for lib in m.get("thread_pools_at_start") or []
            if lib.get("user_api") == "blas"
        }
    )
    if kernels:
        forced = [
            f"{name}={m[key]} {effect}"
            for key, name, effect in (
                ("openblas_coretype", "OPENBLAS_CORETYPE", "in the environment chose them"),
                ("openblas_l2_size", "OPENBLAS_L2_SIZE", "in the environment set their L2 size"),
            )
            if m.get(key)
        ]
        lines.append("  BLAS: " + "; ".join(kernels) + (f" ({'; '.join(forced)})" if forced else ""))
    if m.get("blas_small_kernel") is not None:
        lines.append(
            "  scipy's BLAS runs small products unpacked (OpenBLAS, SkylakeX kernels): "
            + (
                "yes, the cython backend cuts its products for it"
                if m["blas_small_kernel"]
                else "no, the cython backend makes each product whole"
            )
        )
    built = m.get("cython_kernels")
    if built:
        gate_pass = built.get("gate_pass_isa", built["vector_isa"])  # reports written before it was recorded
        cloned = gate_pass != built["vector_isa"]
        lines.append(
            f"  cython kernels compiled for {built['vector_isa']} vectors"
            + (f" (the gate pass on {gate_pass}, a clone for the benchmarked CPU), " if cloned else ", ")
            + ("with OpenMP" if built["openmp"] else "without OpenMP (one thread)")
        )
    gemm = report.get("gemm")
    if gemm:
        lines.append(
            f"  machine {gemm['name']}: {gemm['gflops']:.1f} GFLOP/s (NumPy {gemm['n']}x{gemm['n']} matmul, median;"
            f" the better of before and after: {', '.join(f'{g:.1f}' for g in gemm.get('all_gflops', []))})"
        )
    gemm_col = f"% {gemm['name']}" if gemm else "% gemm"
    header = ["I,H,B,T", "implementation", "median ms", "n", "spread", "µs/step", "GFLOP/s", gemm_col]
    header += [f"vs {p}" for p in peers] + ["max |diff|"]
    rows = []
    for case in report["cases"]:
        load, barrier = case.get("other_load_cpus"), case.get("barrier_ns")
        notes = ([f"other load {load:.1f}"] if load is not None else []) + (
            [f"barrier {barrier:.0f} ns"] if barrier is not None else []
        )
        labels = [case["label"]] + [f"  {note}" for note in notes]
        if len(case["results"]) < len(labels):
            labels = [f"{case['label']} ({', '.join(notes)})"]
        for k, r in enumerate(case["results"]):
            row = [labels[k] if k < len(labels) else "", r["name"]]
            if r["status"] == "ok":
                spread = r["spread"]
                row += [
                    f"{r['median_s'] * 1e3:.3f}",
                    str(len(r["times_s"])),
                    f"{100 * spread:.0f}%" if spread < 10 else ">999%",
                    f"{r['us_per_step']:.1f}",
                    f"{r['gflops']:.2f}",
                    f"{100 * r['gemm_fraction']:.1f}%" if "gemm_fraction" in r else "-",
                ]
                row += [f"{r['speedup'][p]:.2f}x" if p in r["speedup"] else "-" for p in peers]
                row.append(f"{r['max_abs_diff']:.1e}")
            else:
                row.append(f"{r['status'].upper()}: {r.get('reason', '')}")
            rows.append(row)
    lines += ["", *_render(header, rows, right_from=2)]
    if peers and report["geomean_speedup"]:
        lines += [
            "",
            f"geometric mean speedup (peer time / implementation time) over {_count(len(report['cases']), 'shape')}:",
        ]
        g_header = ["implementation"] + [f"vs {p}" for p in peers]
        g_rows = []
        for name, per_peer in report["geomean_speedup"].items():
            g_rows.append(
                [name]
                + [f"{per_peer[p]['speedup']:.2f}x ({per_peer[p]['cases']})" if p in per_peer else "-" for p in peers]
            )
        lines += _render(g_header, g_rows, right_from=1)
        lines.append("  (n) = shapes both ran; > 1 means faster than the peer")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    bad = [
        f"{c['label']} {r['name']}: {r['reason']}"
        for c in report["cases"]
        for r in c["results"]
        if r["status"] in ("mismatch", "error")
    ]
    for b in bad:
        lines.append(f"NOT TIMED: {b}")
    barriers = [c["barrier_ns"] for c in report["cases"] if c.get("barrier_ns") is not None]
    if barriers:
        lines.append(
            f"barrier: {_count(s['threads'], 'thread')} passed one of the cython kernels' barriers in"
            f" {min(barriers):.0f}-{max(barriers):.0f} ns (before each shape); hundreds of ns mean the threads"
            " sit far apart (a shared VM's slow phase), which slows teams that meet every step"
        )
    load = report.get("other_load_cpus")
    if load is not None:
        busiest = max(report["cases"], key=lambda c: c.get("other_load_cpus") or 0, default=None)
        lines.append(
            f"other load: other processes kept {load:.2f} CPUs busy on average during the run"
            + (f" ({busiest['other_load_cpus']:.2f} during {busiest['label']})" if busiest else "")
        )
        cpus = report["machine"]["usable_cpus"]
        if s["threads"] > cpus:
            lines.append(
                f"WARNING: {_count(s['threads'], 'thread')} on {_count(cpus, 'CPU')} this process may use: threads "
                "take turns on the CPUs, and every timing (the GEMM yardstick too) measures that; use --threads "
                f"{cpus} or fewer"
            )
        elif _too_busy(report):
            n = s["threads"]
            lines.append(
                f"WARNING: the machine was busy: {_count(n, 'thread')} did not have {_count(n, 'idle CPU')}, so"
                " timings (multi-threaded ones most) are inflated and ratios unreliable; rerun when it is idle,"
                " or with --threads no more than the idle CPUs"
            )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ratio_between_decades(y: float, _position: int) -> str:
    """Label of a minor tick of the log-scaled speedup axis: 0.2x, 0.5x, 2x, 5x, ...; the others unlabelled."""
    if y <= 0:
        return ""
    leading = y / 10 ** math.floor(math.log10(y) + 1e-9)
    return f"{y:g}x" if round(leading, 6) in (2, 5) else ""


def _too_busy(report: dict[str, Any]) -> bool:
    """Whether other processes left fewer idle CPUs than the threads asked for, overall or during one shape."""
    loads = [report.get("other_load_cpus")] + [c.get("other_load_cpus") for c in report["cases"]]
    peak = max((v for v in loads if v is not None), default=0.0)
    threads, cpus = report["settings"]["threads"], report["machine"]["usable_cpus"]
    # more threads than CPUs is warned about on its own: only the CPUs the threads can have count here
    return peak > BUSY_LOAD_CPUS and peak + min(threads, cpus) > cpus + BUSY_LOAD_CPUS


def _render(header: list[str], rows: list[list[str]], right_from: int) -> list[str]:
    """Align columns; a row shorter than the header ends in a free-text cell spanning the rest."""
    widths = [len(h) for h in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def fmt(row: list[str]) -> str:
        cells = [
            (c.rjust(w) if k >= right_from else c.ljust(w)) if k < len(row) - 1 or len(row) == len(header) else c
            for k, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        return "  ".join(cells).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(r) for r in rows]
    return out


def _why_no_speedup(report: dict[str, Any], names: list[str]) -> str:
    """The GFLOP/s panel's reason: no peer asked for, none could run, or nothing but the peer to compare."""
    if report["peers"]:
        return f"nothing to compare {', '.join(names)} with"
    if any(i["kind"] == "peer" for i in report["implementations"]):
        return "no peer could run here; see the notes"
    return "no peer selected"


def write_plot(report: dict[str, Any], path: str) -> str | None:
    """Grouped bars of speedup vs each peer per shape (log scale); returns None or why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: pip install matplotlib"
    peers, cases = report["peers"], report["cases"]
    labels = [f"I={c['shape']['I']} H={c['shape']['H']}\nB={c['shape']['B']} T={c['shape']['T']}" for c in cases]
    timed = {r["name"] for c in cases for r in c["results"] if r["status"] == "ok"}
    if not timed:
        return "nothing was timed"
    names = [i["name"] for i in report["implementations"] if i["name"] in timed]
    color = {name: plt.get_cmap("tab10")(k % 10) for k, name in enumerate(names)}  # the same in every panel
    panels: list[tuple[str, str | None]] = [
        (f"speedup vs {p} (= {p} time / time; > 1 is faster)", p) for p in peers if timed - {p}
    ]
    if not panels:
        panels = [(f"GFLOP/s ({_why_no_speedup(report, names)})", None)]
    fig_width = max(8, 1.9 * len(cases) + 3)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_width, 4.2 * len(panels)), squeeze=False)
    for ax, (title, peer) in zip(axes[:, 0], panels, strict=True):
        shown = [n for n in names if n != peer]
        width = 0.8 / max(len(shown), 1)
        finite: list[float] = []
        for k, name in enumerate(shown):
            values = []
            for c in cases:
                r = next((r for r in c["results"] if r["name"] == name), None)
                if r is None or r["status"] != "ok" or (peer and peer not in r["speedup"]):
                    values.append(np.nan)
                else:
                    values.append(r["speedup"][peer] if peer else r["gflops"])
            finite += [v for v in values if np.isfinite(v)]
            is_peer = name in peers
            bars = ax.bar(
                np.arange(len(cases)) + (k - (len(shown) - 1) / 2) * width,
                values,
                width,
                label=name + (" (peer)" if is_peer else ""),
                color=color[name],
                hatch="//" if is_peer else None,
                edgecolor="white" if is_peer else None,
            )
            for bar, value in zip(bars, values, strict=True):
                if np.isfinite(value):
                    ax.annotate(
                        f"{value:.2f}x" if peer else f"{value:.1f}",
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        if peer:
            ax.axhline(1.0, color="black", linewidth=0.8)
            finite.append(1.0)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
            ax.yaxis.set_minor_formatter(FuncFormatter(_ratio_between_decades))
        if finite:
            ax.set_ylim(min(finite) / 1.5, max(finite) * 1.8)  # room for the labels above the bars
        ax.set_xticks(np.arange(len(cases)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncols=len(shown))
    v, s = report["machine"]["versions"], report["settings"]
    load = report.get("other_load_cpus")
    busy = f" · BUSY MACHINE: other processes used {load:.1f} CPUs" if _too_busy(report) else ""
    lines = [
        f"gru {v['gru']} CPU benchmark: {_describe_machine(report)}",
        f"numpy {v['numpy']} · torch {v['torch'] or '-'} · onnxruntime {v['onnxruntime'] or '-'} · "
        f"median of up to {_count(s['repeats'], 'call')}{busy}",
    ]
    # about 12 characters of 10-point text per inch: wrapped, the title stays inside the figure
    fig.suptitle("\n".join(textwrap.fill(line, int(fig_width * 12)) for line in lines), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
