"""The CPU benchmark (gru.bench) on a tiny shape: report structure, peers, and the agreement check."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import gru
from gru import bench
from gru.cli import main as cli_main

TINY = bench.Case(input_size=8, hidden_size=16, batch=2, steps=5)


@pytest.fixture(autouse=True)
def _restore_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gru bench`` sets OMP_NUM_THREADS and friends; undo it after each test."""
    for var in bench._THREAD_ENV:
        monkeypatch.delenv(var, raising=False)


def _quick_run(implementations, **kwargs):
    return bench.run(
        [TINY],
        implementations=implementations,
        threads=1,
        repeats=2,
        warmup=1,
        progress=False,
        measure_machine_gemm=False,
        **kwargs,
    )


def test_cli_writes_a_complete_json_report(tmp_path, capsys):
    path = tmp_path / "results" / "cpu.json"
    argv = ["bench", "--shapes", "8,16,2,5", "--backends", "numpy", "--repeats", "2", "--warmup", "1"]
    assert cli_main([*argv, "--threads", "1", "--json", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "8,16,2,5" in out and "sgemm" in out

    report = json.loads(path.read_text())
    assert report["schema"] == bench.SCHEMA
    machine = report["machine"]
    assert machine["cpu"] and machine["logical_cpus"] >= 1
    assert machine["versions"]["numpy"] == np.__version__ and machine["versions"]["gru"] == gru.__version__
    assert report["settings"]["threads"] == 1 and report["settings"]["dtype"] == "float32"
    assert report["gemm"]["gflops"] > 0
    assert report["peers"] == [] and report["geomean_speedup"] == {}
    (case,) = report["cases"]
    assert case["shape"] == {"I": 8, "H": 16, "B": 2, "T": 5}
    assert case["flops"] == 6 * 16 * (8 + 16) * 2 * 5
    assert "other_load_cpus" in case and "other_load_cpus" in report
    (result,) = case["results"]
    assert result["name"] == "numpy" and result["status"] == "ok" and result["max_abs_diff"] == 0.0
    assert len(result["times_s"]) == result["repeats"] == 2
    assert result["median_s"] == pytest.approx(float(np.median(result["times_s"])))
    assert result["us_per_step"] == pytest.approx(result["median_s"] / 5 * 1e6)
    assert result["gflops"] == pytest.approx(case["flops"] / result["median_s"] / 1e9)
    assert 0 < result["gemm_fraction"] == pytest.approx(result["gflops"] / report["gemm"]["gflops"])


@pytest.mark.parametrize("peer, modules", [("torch", ["torch"]), ("onnxruntime", ["onnx", "onnxruntime"])])
def test_peers_agree_and_get_speedups(peer, modules):
    for module in modules:
        pytest.importorskip(module)
    report = _quick_run(bench.resolve_implementations(["numpy", peer]))
    assert report["peers"] == [peer]
    results = {r["name"]: r for r in report["cases"][0]["results"]}
    assert results[peer]["status"] == "ok", results[peer].get("reason")
    assert results[peer]["max_abs_diff"] < 1e-5
    ours = results["numpy"]
    assert ours["speedup"][peer] == pytest.approx(results[peer]["median_s"] / ours["median_s"])
    assert report["geomean_speedup"]["numpy"][peer]["cases"] == 1
    assert f"vs {peer}" in bench.format_table(report)


class _Numpy(bench.Implementation):
    """The numpy backend, with its output passed through ``damage``."""

    kind = "gru"

    def __init__(self, name, damage):
        self.name, self.damage = name, damage

    def prepare(self, state, case, dtype, threads):
        layer = gru.GRU(case.input_size, case.hidden_size, dtype=dtype, backend="numpy")
        layer.load_state_dict(state)
        return lambda x: self.damage(layer(x)[0])


def _raise(_):
    raise RuntimeError("boom")


def test_a_wrong_implementation_is_refused_not_timed():
    wrong = _Numpy("wrong", lambda y: y * 1.01)
    broken = _Numpy("broken", _raise)
    misshapen = _Numpy("misshapen", lambda y: y[:-1])
    right = _Numpy("right", lambda y: y + 1e-6)  # within tolerance
    report = _quick_run(bench.resolve_implementations(["numpy"]), extra=[wrong, broken, misshapen, right])
    results = {r["name"]: r for r in report["cases"][0]["results"]}
    assert results["wrong"]["status"] == "mismatch" and results["wrong"]["max_abs_diff"] > 1e-4
    assert results["broken"]["status"] == "error" and "boom" in results["broken"]["reason"]
    assert results["misshapen"]["status"] == "mismatch" and "shape" in results["misshapen"]["reason"]
    for name in ("wrong", "broken", "misshapen"):
        assert "times_s" not in results[name] and "median_s" not in results[name]
    assert results["right"]["status"] == "ok" and results["numpy"]["status"] == "ok"
    table = bench.format_table(report)
    assert "NOT TIMED: 8,16,2,5 wrong" in table and "MISMATCH" in table


def test_bad_arguments_exit_2(capsys):
    assert bench.main(["--backends", "no-such-backend", "--no-progress"]) == 2
    assert "unknown implementation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "1,2,3"])


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    report = _quick_run(bench.resolve_implementations(["numpy"]))
    path = tmp_path / "speedup.png"
    assert bench.write_plot(report, str(path)) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_without_optional_dependencies():
    """Blocks the optional imports in a fresh interpreter: peers are skipped with a note, ours still run."""
    code = """
import json, sys
for name in ("torch", "onnx", "onnxruntime", "tqdm", "matplotlib", "threadpoolctl"):
    sys.modules[name] = None  # makes "import name" raise ImportError
from gru import bench
report = bench.run([bench.Case(4, 8, 1, 3)], implementations=bench.resolve_implementations(["numpy", "torch",
    "onnxruntime"]), threads=1, repeats=1, warmup=0, measure_machine_gemm=False)
print(json.dumps({"peers": report["peers"], "notes": report["notes"],
    "status": [r["status"] for r in report["cases"][0]["results"]],
    "plot": bench.write_plot(report, "unused.png")}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peers"] == [] and result["status"] == ["ok"]
    assert any(n.startswith("torch: skipped") for n in result["notes"])
    assert any(n.startswith("onnxruntime: skipped") for n in result["notes"])
    assert "matplotlib" in result["plot"]


# -- training cases (gru bench --train) -------------------------------------------------------------


class _DamagedGradients(bench.BackendImplementation):
    """The numpy backend's training runner with one gradient scaled: must be refused, not timed."""

    def __init__(self, key):
        super().__init__("numpy", next(i for i in gru.list_backends() if i.name == "numpy"))
        self.name, self.key = f"damaged-{key}", key

    def prepare_training(self, state, case, dtype, threads, d_output):
        step = super().prepare_training(state, case, dtype, threads, d_output)

        def damaged(x):
            grads = step(x)
            return grads | {self.key: grads[self.key] * 1.01}

        return damaged


def test_training_cases_check_gradients_and_get_speedups_against_torch():
    pytest.importorskip("torch")
    impls = bench.resolve_implementations(["numpy", "torch", "onnxruntime"])
    extra = [_DamagedGradients("weight_hh_l0"), _DamagedGradients("input")]
    report = _quick_run(impls, extra=extra, training=True)
    assert report["settings"]["mode"] == "training"
    assert report["peers"] == ["torch"]
    assert any("onnxruntime: skipped, inference only" in n for n in report["notes"])
    (case,) = report["cases"]
    assert case["flops"] == 18 * 16 * (8 + 16) * 2 * 5
    results = {r["name"]: r for r in case["results"]}
    for name in ("numpy", "torch"):
        assert results[name]["status"] == "ok", results[name].get("reason")
        assert results[name]["max_abs_diff"] < 1e-4
    assert results["numpy"]["speedup"]["torch"] == pytest.approx(
        results["torch"]["median_s"] / results["numpy"]["median_s"]
    )
    for key in ("weight_hh_l0", "input"):
        bad = results[f"damaged-{key}"]
        assert bad["status"] == "mismatch" and key in bad["reason"] and "times_s" not in bad
    assert "training (forward + backward)" in bench.format_table(report)


def test_cli_train_runs_the_training_shapes_cut_short(capsys):
    argv = ["bench", "--train", "--quick", "--backends", "numpy", "--repeats", "1", "--warmup", "0"]
    argv += ["--shapes", "8,16,2,5", "4,8,1,3", "--threads", "1", "--no-progress"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "training (forward + backward)" in out and "8,16,2,5" in out and "4,8,1,3" in out


def test_backends_without_training_are_skipped_with_the_reason():
    info = next(i for i in gru.list_backends() if i.name == "numpy")
    caps = dataclasses.replace(info.capabilities, training=False)
    untrained = bench.BackendImplementation("numpy", dataclasses.replace(info, capabilities=caps))
    assert untrained.unavailable("float32") is None
    assert untrained.training_unavailable("float32") == "does not declare training"
    assert _Numpy("inference-only", lambda y: y).training_unavailable("float32").startswith("no training runner")


def _ab_kernels():
    """benchmarks/ab_kernels.py, imported from the checkout (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_kernels.py"
    spec = importlib.util.spec_from_file_location("ab_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_ab_kernels_runs_both_builds_and_restores_the_installed_one(tmp_path):
    import io
    import shutil

    from gru.backends.cython import _kernels

    ab = _ab_kernels()
    backend = gru.get_backend("cython")
    builds = {}
    for tag in "AB":  # two copies of the installed build: two modules (one file would load once)
        copy = tmp_path / tag / "_kernels.so"
        copy.parent.mkdir()
        shutil.copy(_kernels.__file__, copy)
        builds[tag] = ab.load_build(str(copy), tag.lower())
    assert builds["A"] is not builds["B"] and _kernels not in builds.values()
    calls = {"A": 0, "B": 0}
    for tag, module in builds.items():  # count the calls that reach each build

        def counted(*args, _run=module.run_direction, _tag=tag):
            calls[_tag] += 1
            return _run(*args)

        module.run_direction = counted
    out = io.StringIO()
    shapes = [bench.parse_shape("8,16,3,5")]
    medians = ab.compare(builds, shapes, seconds=0.3, window=0.1, threads=1, train=False, out=out)
    assert set(medians) == {"8,16,3,5"} and all(m > 0 for m in medians["8,16,3,5"].values())
    assert calls["A"] > 0 and calls["B"] > 0 and abs(calls["A"] - calls["B"]) <= 1
    assert "B/A" in out.getvalue() and "t=" in out.getvalue()
    assert backend._kernels is _kernels  # the installed build is back


def test_ab_kernels_refuses_a_file_that_is_not_a_build(tmp_path, capsys):
    bogus = tmp_path / "not_kernels.so"
    bogus.write_text("not an extension module")
    with pytest.raises(SystemExit) as exc:
        _ab_kernels().main([str(bogus), str(bogus), "--shapes", "4,4,1,2"])
    assert exc.value.code == 2
    assert "not_kernels.so: expected a build" in capsys.readouterr().err
