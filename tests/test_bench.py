"""The CPU benchmark (gru.bench) on a tiny shape: report structure, peers, and the agreement check."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gru
from gru import bench
from gru.bench import _cases, _cli, _machine, _run
from gru.cli import main as cli_main

TINY = bench.Case(input_size=8, hidden_size=16, batch=2, steps=5)


@pytest.fixture(autouse=True)
def _restore_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gru bench`` sets OMP_NUM_THREADS and friends; undo it after each test."""
    for var in _cases._THREAD_ENV:
        monkeypatch.delenv(var, raising=False)


def _quick_run(implementations, cases=(TINY,), **kwargs):
    settings = {"threads": 1, "repeats": 2, "warmup": 1, "progress": False, "measure_machine_gemm": False} | kwargs
    return bench.run(list(cases), implementations=implementations, **settings)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_cli_leaves_the_thread_settings_of_its_process_as_they_were(monkeypatch, capsys):
    """A run inside a longer process: torch, loaded while the run's OMP_NUM_THREADS is set, may set the calling
    thread's OpenMP count from it (here a run that leaves it changed stands in); later Cython calls then took it."""
    from threadpoolctl import threadpool_limits

    from gru.backends.cython import _kernels

    gru.get_backend("cython").available()
    for var in _cases._THREAD_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("MKL_NUM_THREADS", "")
    before = _kernels.max_threads()
    real_run = _cli.run

    def run_that_changes_openmp(*args, **kwargs):
        report = real_run(*args, **kwargs)
        threadpool_limits(limits=before + 1, user_api="openmp")  # not restored, as torch's import left it
        assert _kernels.max_threads() == before + 1
        return report

    monkeypatch.setattr(_cli, "run", run_that_changes_openmp)
    argv = ["bench", "--shapes", "8,16,2,5", "--backends", "numpy", "--repeats", "1", "--warmup", "0"]
    assert cli_main([*argv, "--threads", str(before + 1), "--no-progress"]) == 0
    assert _kernels.max_threads() == before
    assert os.environ.get("OMP_NUM_THREADS") is None and os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert os.environ["MKL_NUM_THREADS"] == ""
    assert capsys.readouterr().out


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


def test_an_implementation_raising_while_timed_is_that_implementations_error():
    calls = []

    def fails_later(y):  # passes its check and its warm-up, then raises
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("worn out")
        return y

    report = _quick_run(bench.resolve_implementations(["numpy"]), extra=[_Numpy("flaky", fails_later)])
    results = {r["name"]: r for r in report["cases"][0]["results"]}
    assert results["flaky"]["status"] == "error" and "worn out" in results["flaky"]["reason"]
    assert "median_s" not in results["flaky"]
    assert results["numpy"]["status"] == "ok" and results["numpy"]["repeats"] == 2  # the run went on


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


def _benchmark_script(name: str):
    """benchmarks/NAME.py, imported from the checkout (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ab_kernels():
    return _benchmark_script("ab_kernels")


def _refused(script: str, argv: list[str], capsys) -> str:
    """benchmarks/SCRIPT.py's main(argv) exits with status 2 (a usage error); what it printed on stderr."""
    with pytest.raises(SystemExit) as exc:
        _benchmark_script(script).main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


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
    variants = set()  # run_direction's reset_after argument
    dtypes = set()  # and its input's dtype
    for tag, module in builds.items():  # count the calls that reach each build

        def counted(*args, _run=module.run_direction, _tag=tag):
            calls[_tag] += 1
            variants.add(args[9])
            dtypes.add(args[0].dtype.name)
            return _run(*args)

        module.run_direction = counted
    out = io.StringIO()
    shapes = [bench.parse_shape("8,16,3,5")]
    medians = ab.compare(builds, shapes, seconds=0.3, window=0.1, threads=1, train=False, out=out)
    assert set(medians) == {"8,16,3,5"} and all(m > 0 for m in medians["8,16,3,5"].values())
    assert calls["A"] > 0 and calls["B"] > 0 and abs(calls["A"] - calls["B"]) <= 1
    assert "B/A" in out.getvalue() and "t=" in out.getvalue()
    assert backend._kernels is _kernels  # the installed build is back
    assert variants == {True}
    ab.compare(builds, shapes, seconds=0.1, window=0.1, threads=1, train=False, reset_after=False, out=out)
    assert variants == {True, False}
    assert dtypes == {"float32"}
    ab.compare(builds, shapes, seconds=0.1, window=0.1, threads=1, train=False, dtype="float64", out=out)
    assert dtypes == {"float32", "float64"}


@pytest.mark.parametrize("option", [["--seconds", "nan"], ["--window", "inf"], ["--seconds", "0"], ["--threads", "0"]])
def test_ab_kernels_checks_its_numbers(tmp_path, capsys, option):
    assert "--seconds and --window must be > 0 and --threads >= 1" in _refused(
        "ab_kernels", ["A.so", "B.so", "--shapes", "4,4,1,2", *option], capsys
    )


def test_ab_kernels_refuses_a_file_that_is_not_a_build(tmp_path, capsys):
    bogus = tmp_path / "not_kernels.so"
    bogus.write_text("not an extension module")
    assert "not_kernels.so: expected a build" in _refused(
        "ab_kernels", [str(bogus), str(bogus), "--shapes", "4,4,1,2"], capsys
    )


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_floors_add_up_the_projection_and_every_step_past_the_first(dtype):
    """The benchmark's calls start from h0 = 0, whose product the kernels skip: T - 1 steps of products."""
    floors = _benchmark_script("floors")
    for shape in ("8,16,1,5", "24,48,3,4"):  # one sequence (gemv) and a batch (gemm)
        f = floors.floor(bench.parse_shape(shape), threads=2, dtype=dtype)
        assert f["projection_s"] > 0 and f["step_s"] > 0 and f["team"] in (1, 2)
        steps = int(shape.split(",")[-1]) - 1
        assert f["floor_s"] == pytest.approx(f["projection_s"] + steps * f["step_s"])
        # the team at once; the shared floor takes the slower of the two times of each part
        assert f["shared_step_s"] > 0 and f["shared_projection_s"] > 0
        assert f["shared_floor_s"] == pytest.approx(
            max(f["projection_s"], f["shared_projection_s"]) + steps * max(f["step_s"], f["shared_step_s"])
        )


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_floors_leave_out_the_calls_split_by_sequence():
    from gru.backends.cython import _kernels

    gru.get_backend("cython").available()
    B, H = 32, 32
    assert _kernels.splits_sequences(B, H, 4, 2)  # what makes this shape one
    assert _benchmark_script("floors").floor(bench.Case(8, H, B, 3), threads=2) == {"skipped": "split by sequence"}


def test_floor_bounds_divide_the_run_by_the_floor():
    floors = _benchmark_script("floors")
    report = {
        "cases": [
            {
                "label": "a",
                "results": [
                    {"name": "cython", "kind": "gru", "status": "ok", "median_s": 3.0},
                    {"name": "onnxruntime", "kind": "peer", "status": "ok", "median_s": 4.0},
                    {"name": "torch", "kind": "peer", "status": "MISMATCH"},
                ],
            },
            {
                "label": "b",
                "results": [
                    {"name": "cython", "kind": "gru", "status": "ok", "median_s": 8.0},
                    {"name": "onnxruntime", "kind": "peer", "status": "ok", "median_s": 1.0},
                ],
            },
            {"label": "c", "results": [{"name": "cython", "kind": "gru", "status": "ok", "median_s": 1.0}]},
        ]
    }
    floor = {"a": {"floor_s": 2.0, "shared_floor_s": 4.0}, "b": {"floor_s": 4.0}, "c": {"skipped": "split by sequence"}}
    shared = floors.bounds(floor, report, "shared_floor_s")  # only the shapes with a shared floor
    assert set(shared["shapes"]) == {"a"} and shared["shapes"]["a"]["best_speedup"] == {"onnxruntime": 1.0}
    found = floors.bounds(floor, report)
    assert set(found["shapes"]) == {"a", "b"}
    assert found["shapes"]["a"]["over_floor"] == {"cython": 1.5, "onnxruntime": 2.0}
    assert found["shapes"]["a"]["best_speedup"] == {"onnxruntime": 2.0}
    assert found["shapes"]["b"]["best_speedup"] == {"onnxruntime": 0.25}
    assert found["geomean"]["best_speedup"]["onnxruntime"] == pytest.approx((2.0 * 0.25) ** 0.5)
    assert found["geomean"]["over_floor"]["cython"] == pytest.approx((1.5 * 2.0) ** 0.5)


def test_floors_refuse_a_training_run(tmp_path, capsys):
    run = tmp_path / "train.json"
    run.write_text(json.dumps({"cases": [], "settings": {"threads": 2, "dtype": "float32", "mode": "training"}}))
    assert "a training run (--train); the floors are the forward's" in _refused("floors", ["--bench", str(run)], capsys)


def test_floors_refuse_a_file_that_is_not_a_bench_run(tmp_path, capsys):
    bogus = tmp_path / "run.json"
    bogus.write_text('{"cases": []}')
    assert f"--bench {bogus}: expected the JSON of `gru bench --json`" in _refused(
        "floors", ["--bench", str(bogus)], capsys
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bench", "run.json", "--threads", "2"], "--bench takes the shapes, threads and dtype from the run"),
        (["--threads", "0", "--shapes", "4,4,1,2"], "--threads: expected a positive integer, got 0"),
        (["--json", "no/such/dir/f.json", "--shapes", "4,4,1,2"], "--json no/such/dir/f.json: cannot write it"),
    ],
)
def test_floors_check_their_options_before_measuring(argv, message, capsys):
    if not gru.backend_available("cython"):
        pytest.skip("the cython backend is not built here")
    assert message in _refused("floors", argv, capsys)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_the_kernels_timing_calls_check_their_arguments():
    from gru.backends.cython import _kernels

    w_hh, h = np.zeros((12, 4), np.float32), np.zeros((2, 4), np.float32)
    w_ih = np.zeros((12, 4), np.float32)  # W_ih of H = 4, I = 4
    with pytest.raises(ValueError, match="w_hh"):
        _kernels.step_seconds(np.zeros((12, 5), np.float32), h, 1, False, 1)
    with pytest.raises(ValueError, match="team, calls and rows"):
        _kernels.step_seconds(w_hh, h, 0, False, 1)
    with pytest.raises(ValueError, match="team, calls and rows"):
        _kernels.step_seconds(w_hh, h, 2, False, 0, together=True)
    with pytest.raises(ValueError, match="w_ih_t"):
        _kernels.projection_seconds(np.zeros((2, 3), np.float32), np.zeros((4, 12), np.float32), w_ih, 1, False, 1)
    with pytest.raises(ValueError, match="w_ih"):
        _kernels.projection_seconds(np.zeros((2, 4), np.float32), np.zeros((4, 12), np.float32), w_ih[:4], 1, False, 1)
    with pytest.raises(ValueError, match="team, calls, rows and H"):
        _kernels.projection_seconds(np.zeros((2, 4), np.float32), np.zeros((4, 12), np.float32), w_ih, 1, False, 0)
    with pytest.raises(ValueError, match="team, calls, rows and H"):
        x, w_ih_t = np.zeros((2, 4), np.float32), np.zeros((4, 12), np.float32)
        _kernels.projection_seconds(x, w_ih_t, w_ih, 0, False, 1, True)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_the_kernels_timers_refuse_a_team_openmp_does_not_give(run_on_one_openmp_thread):
    """With fewer threads than the team, some threads' parts would never run and the shared floor would be
    too low: both timers raise instead (OpenMP held to one thread in a child process)."""
    from gru.backends.cython import _kernels

    if not _kernels.has_openmp():
        pytest.skip("built without OpenMP: every call runs in one thread")
    code = (
        "import numpy as np\n"
        "from gru.backends.cython import _kernels as k\n"
        "w, h = np.zeros((96, 32), np.float32), np.zeros((1, 32), np.float32)\n"
        "x, w_ih_t, w_ih = np.zeros((3, 8), np.float32), np.zeros((8, 96), np.float32), np.zeros((96, 8), np.float32)\n"
        "assert k.step_seconds(w, h, 1, False, 2, together=True) > 0\n"
        "cases = ((k.step_seconds, (w, h, 2, False, 2)), (k.projection_seconds, (x, w_ih_t, w_ih, 2, False, 2)))\n"
        "for timed, args in cases:\n"
        "    try:\n"
        "        timed(*args, together=True)\n"
        "    except RuntimeError as exc:\n"
        "        assert 'OpenMP gave 1 threads, not 2' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(f'{timed.__name__}: no error')\n"
        "print('ok')\n"
    )
    assert run_on_one_openmp_thread(code) == ["ok"]


# -- arguments are checked before anything is timed ---------------------------------------------------

TINY_ARGV = ["bench", "--shapes", "8,8,1,4", "--backends", "numpy", "--repeats", "1", "--warmup", "0"]


@pytest.fixture
def no_timing(monkeypatch):
    """Fails the test if the run starts: a bad argument must be refused before anything is timed."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(_cli, "run", must_not_run)  # where gru bench looks it up


@pytest.mark.parametrize(
    "flag, name, message",
    [
        ("--json", "afile/out.json", "afile' is a file, not a directory"),
        ("--json", "adir", "expected a file name, got the directory"),
        ("--plot", "afile/out.png", "afile' is a file, not a directory"),
        ("--plot", "out.txt", "expected a file name ending in one of"),
        ("--json", "newdir/", "expected a file name, got the directory"),  # not made yet: still a directory
        ("--plot", "adir", "expected a file name, got the directory"),
        ("--plot", "newdir/", "expected a file name, got the directory"),  # matplotlib would write newdir/.png.png
    ],
)
def test_unwritable_outputs_are_refused_before_timing(tmp_path, capsys, no_timing, flag, name, message):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    path = os.path.join(str(tmp_path), name)  # (a Path would drop the trailing separator of newdir/)
    assert cli_main([*TINY_ARGV, flag, path, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"gru bench: error: {flag}: ") and message in captured.err
    assert repr(path) in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # nothing left behind


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="no /proc here")
def test_outputs_in_proc_are_refused(capsys, no_timing):
    assert cli_main([*TINY_ARGV, "--json", "/proc/out.json"]) == 2
    assert "--json: cannot write '/proc/out.json': cannot create files in '/proc'" in capsys.readouterr().err


def test_plot_without_a_suffix_names_the_file_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli_main([*TINY_ARGV, "--threads", "1", "--plot", str(tmp_path / "chart"), "--no-progress"]) == 0
    assert f"wrote {tmp_path / 'chart.png'}\n" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
        (["--threads", "-2"], "--threads: expected an integer >= 1, got -2"),
        (["--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
        (["--repeats", "-1"], "--repeats: expected an integer >= 1, got -1"),
        (["--warmup", "-1"], "--warmup: expected an integer >= 0, got -1"),
        (["--budget", "-1"], "--budget: expected a number of seconds >= 0, got -1"),
        (["--budget", "nan"], "--budget: expected a number of seconds >= 0, got nan"),
        (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
        (
            ["--shapes", "1,1,1,200000000000000"],
            "--shapes: expected shapes that fit in memory, got 1,1,1,200000000000000",
        ),
    ],
)
def test_bad_values_name_the_option_and_the_value(capsys, no_timing, extra, message):
    assert cli_main([*TINY_ARGV, *extra, "--no-progress"]) == 2
    line = capsys.readouterr().err.rstrip("\n")
    expected = f"gru bench: error: {message}"
    assert "\n" not in line and (line == expected or line.startswith(expected + ": ")), line


@pytest.mark.parametrize("value", ["-1,2,3,4", "8,-8,1,4"])
def test_negative_shape_values_get_the_shape_message(capsys, value):
    for argv in (["bench", "--shapes", value], ["bench", f"--shapes={value}"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --shapes: expected I,H,B,T as four positive integers, got '{value}'" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backends", ","], "--backends: expected implementation names separated by commas"),
        (["--backends", ""], "--backends: expected implementation names separated by commas"),
        (["--backends", "cupy"], "--backends cupy: nothing can run: cupy: skipped, "),  # not here, or not on the CPU
        (
            ["--train", "--backends", "onnxruntime"],
            "--backends onnxruntime: nothing can run: onnxruntime: skipped, inference only",
        ),
        (["--backends", "gru:nosuch"], "--backends: no backend named 'nosuch' is registered"),
    ],
)
def test_a_selection_that_can_run_nothing_exits_2_without_a_plot(tmp_path, capsys, extra, message):
    plot = tmp_path / "chart.png"
    argv = [*TINY_ARGV[:-6], *extra, "--shapes", "8,8,1,4", "--repeats", "1", "--warmup", "0"]
    assert cli_main([*argv, "--plot", str(plot), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"gru bench: error: {message}") and captured.out == ""
    assert not plot.exists()


def test_write_plot_refuses_a_run_where_nothing_was_timed(tmp_path):
    pytest.importorskip("matplotlib")
    report = _quick_run([], extra=[_Numpy("wrong", lambda y: y * 1.01)])
    assert bench.write_plot(report, str(tmp_path / "p.png")) == "nothing was timed"
    assert not (tmp_path / "p.png").exists()


def test_a_shape_out_of_memory_is_that_shape_s_error(monkeypatch):
    reference = _run._training_reference

    def out_of_memory(state, case, x, d_output):
        if case.steps == 5:
            raise MemoryError("Unable to allocate 1.00 PiB for an array")
        return reference(state, case, x, d_output)

    monkeypatch.setattr(_run, "_training_reference", out_of_memory)
    impls = bench.resolve_implementations(["numpy"])
    report = _quick_run(impls, [TINY, bench.Case(4, 8, 1, 3)], repeats=1, warmup=0, training=True)
    big, small = report["cases"]
    assert [(r["name"], r["status"]) for r in big["results"]] == [("numpy", "error")]
    assert big["results"][0]["reason"] == "MemoryError: Unable to allocate 1.00 PiB for an array"
    assert small["results"][0]["status"] == "ok"
    assert "NOT TIMED: 8,16,2,5 numpy: MemoryError" in bench.format_table(report)


def test_the_report_records_the_tolerance_its_check_applied():
    impls = bench.resolve_implementations(["numpy"])
    inference = _quick_run(impls)["settings"]["tolerance"]
    training = _quick_run(impls, training=True)["settings"]["tolerance"]
    assert inference == dict(zip(("rtol", "atol"), bench.TOLERANCES["float32"], strict=True))
    assert training == dict(zip(("rtol", "atol"), bench.TRAIN_TOLERANCES["float32"], strict=True))
    assert training != inference


def test_the_readme_states_the_defaults_of_the_code():
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "benchmarks" / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert f"`--warmup` untimed calls per implementation (default {bench.DEFAULT_WARMUP}, `--quick` 1)" in text
    assert bench.QUICK_WARMUP == 1
    assert f"`--repeats` timed calls (default {bench.DEFAULT_REPEATS}, `--quick` {bench.QUICK_REPEATS})" in text
    assert f"`--budget` (default {bench.DEFAULT_BUDGET_S:g} s)" in text


def _plot_figure(report, path, monkeypatch):
    """Writes the plot; returns its panel titles, whether the title stays inside the figure, and the warnings."""
    import warnings

    from matplotlib.figure import Figure

    seen = {}
    savefig = Figure.savefig

    def spy(fig, *args, **kwargs):
        savefig(fig, *args, **kwargs)
        (title,) = fig.texts  # the suptitle
        box = title.get_window_extent(fig.canvas.get_renderer())
        seen.update(titles=[ax.get_title() for ax in fig.axes], inside=0 <= box.x0 and box.x1 <= fig.bbox.x1)

    monkeypatch.setattr(Figure, "savefig", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bench.write_plot(report, str(path)) is None
    return seen["titles"], seen["inside"], [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


class _Peer(_Numpy):
    kind = "peer"


def test_plots_of_one_implementation_say_why_they_show_gflops(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    alone = _quick_run([], extra=[_Peer("torch", lambda y: y)])
    alone["machine"]["cpu"] = "A Processor With A Model Name As Long As Some Are, 96 Cores, Made In The Year 2030"
    alone["machine"]["versions"]["torch"] = "2.13.0+cpu.and.a.long.local.version.label"
    titles, inside, warned = _plot_figure(alone, tmp_path / "torch.png", monkeypatch)
    assert titles == ["GFLOP/s (nothing to compare torch with)"] and inside and warned == []

    numpy_only = _quick_run(bench.resolve_implementations(["numpy"]))
    titles, inside, warned = _plot_figure(numpy_only, tmp_path / "numpy.png", monkeypatch)
    assert titles == ["GFLOP/s (no peer selected)"] and inside and warned == []

    both = _quick_run(bench.resolve_implementations(["numpy"]), extra=[_Peer("torch", lambda y: y)])
    titles, _, warned = _plot_figure(both, tmp_path / "both.png", monkeypatch)
    assert titles == ["speedup vs torch (= torch time / time; > 1 is faster)"] and warned == []


def test_other_load_is_at_most_the_cpus_and_the_warning_counts_right(monkeypatch):
    clock = iter([0.0, 1e6])  # a busy-time jump no machine can make in the time between
    with monkeypatch.context() as patch:
        patch.setattr(_machine, "_busy_cpu_seconds", lambda: next(clock))
        assert _machine._LoadMeter().other_cpus() == float(os.cpu_count())

    report = _quick_run(bench.resolve_implementations(["numpy"]))
    report["other_load_cpus"] = float(report["machine"]["usable_cpus"])
    table = bench.format_table(report)
    assert "WARNING: the machine was busy: 1 thread did not have 1 idle CPU, so" in table
    assert "median of up to 2 calls in 2 interleaved rounds" in table


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_each_shape_says_how_long_the_threads_took_to_pass_a_barrier_just_before_it():
    two = _quick_run(bench.resolve_implementations(["numpy"]), cases=(TINY, bench.Case(4, 8, 1, 3)), threads=2)
    assert all(case["barrier_ns"] > 0 for case in two["cases"])
    table = bench.format_table(two)
    low, high = min(c["barrier_ns"] for c in two["cases"]), max(c["barrier_ns"] for c in two["cases"])
    assert f"barrier: 2 threads passed one of the cython kernels' barriers in {low:.0f}-{high:.0f} ns" in table
    # one implementation: the load and the barrier beside the shape, on its one row
    assert f"8,16,2,5 (other load {two['cases'][0]['other_load_cpus']:.1f}, barrier" in table

    one = _quick_run(bench.resolve_implementations(["numpy"]))
    assert one["cases"][0]["barrier_ns"] is None and "barrier" not in bench.format_table(one)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_barrier_seconds_times_a_team_and_refuses_nonsense():
    from gru.backends.cython import _kernels

    # a team of one passes its barriers without waiting: a loop, the timer's cost spread over many rounds
    assert 0 < _kernels.barrier_seconds(1, 200_000) < _kernels.barrier_seconds(2, 2000) < 1e-3
    for team, rounds in [(0, 10), (2, 0)]:
        with pytest.raises(ValueError, match="team and rounds: expected at least 1 each"):
            _kernels.barrier_seconds(team, rounds)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="the cython backend is not built here")
def test_a_team_smaller_than_asked_for_raises_instead_of_waiting_forever_and_the_bench_leaves_it_out(
    run_on_one_openmp_thread,
):
    code = (
        "from gru.backends.cython import _kernels\n"
        "from gru.bench import _machine\n"
        "try:\n"
        "    _kernels.barrier_seconds(2, 10)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "print(_machine.measure_barrier(2))\n"
    )
    assert run_on_one_openmp_thread(code) == ["team: OpenMP gave 1 threads, not 2", "None"]


def test_more_threads_than_cpus_is_warned_about_as_such_not_as_a_busy_machine():
    report = _quick_run(bench.resolve_implementations(["numpy"]))
    cpus = report["machine"]["usable_cpus"]
    report["settings"]["threads"] = cpus + 3
    report["other_load_cpus"] = 1.5  # other processes too: the warning that applies is the threads'
    table = bench.format_table(report)
    assert f"WARNING: {cpus + 3} threads on {cpus} CPU" in table and f"use --threads {cpus} or fewer" in table
    assert "the machine was busy" not in table


def test_the_machine_says_its_microarchitecture_and_simd_extensions():
    machine = bench.machine_info()
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo here")
    with open("/proc/cpuinfo") as f:
        line = next((line for line in f if line.startswith("flags")), None)
    if line is None:
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    flags = set(line.split(":", 1)[1].split())
    assert set(machine["cpu_simd"]) == flags & {
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
    }
    assert machine["cpu_family"] is None or machine["cpu_family"].isdigit()


@pytest.mark.parametrize("coretype", ["Haswell", None])
@pytest.mark.parametrize("l2_size", ["512", None])
def test_the_header_names_the_blas_kernels_and_who_chose_them(monkeypatch, coretype, l2_size):
    """OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE override what OpenBLAS would pick for the CPU: the report says so."""
    for name, value in (("OPENBLAS_CORETYPE", coretype), ("OPENBLAS_L2_SIZE", l2_size)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    report = _quick_run(bench.resolve_implementations(["numpy"]))
    assert report["machine"]["openblas_coretype"] == coretype
    assert report["machine"]["openblas_l2_size"] == l2_size
    report["machine"]["thread_pools_at_start"] = [
        {"user_api": "blas", "internal_api": "openblas", "version": "0.3.30", "architecture": "Haswell"},
        {"user_api": "openmp", "internal_api": "openmp", "version": None, "architecture": None},
    ]
    header = [line for line in bench.format_table(report).splitlines() if line.startswith("  BLAS: ")]
    assert header[0].startswith("  BLAS: openblas 0.3.30, Haswell kernels")
    assert ("OPENBLAS_CORETYPE=Haswell in the environment chose them" in header[0]) is (coretype is not None)
    assert ("OPENBLAS_L2_SIZE=512 in the environment set their L2 size" in header[0]) is (l2_size is not None)
    assert header[0].endswith(")") is (coretype is not None or l2_size is not None)


def test_the_header_says_how_the_cython_kernels_were_built():
    """Their vector instruction set, the gate pass's where a portable build picked a clone for the CPU, and
    whether they have OpenMP."""
    if not gru.backend_available("cython"):
        pytest.skip("the cython backend is not built")
    from gru.backends.cython import _kernels

    report = _quick_run(bench.resolve_implementations(["numpy"]))
    built = report["machine"]["cython_kernels"]
    assert built == {
        "vector_isa": _kernels.vector_isa(),
        "gate_pass_isa": _kernels.gate_pass_isa(),
        "openmp": _kernels.has_openmp(),
    }
    assert built["vector_isa"] in _kernels.VECTOR_ISAS
    for isa, gate_pass, openmp, expected in (
        ("SSE2", "SSE2", False, "  cython kernels compiled for SSE2 vectors, without OpenMP (one thread)"),
        ("AVX-512", "AVX-512", True, "  cython kernels compiled for AVX-512 vectors, with OpenMP"),
        (
            "SSE2",
            "AVX2+FMA",
            True,
            "  cython kernels compiled for SSE2 vectors (the gate pass on AVX2+FMA, a clone for the benchmarked CPU),"
            " with OpenMP",
        ),
    ):
        report["machine"]["cython_kernels"] = {"vector_isa": isa, "gate_pass_isa": gate_pass, "openmp": openmp}
        assert expected in bench.format_table(report).splitlines()
    report["machine"]["cython_kernels"] = {"vector_isa": "AVX", "openmp": True}  # a report from before the clones
    assert "  cython kernels compiled for AVX vectors, with OpenMP" in bench.format_table(report).splitlines()
    report["machine"]["cython_kernels"] = None  # not built: no line
    assert "cython kernels compiled" not in bench.format_table(report)


@pytest.mark.parametrize("training", [False, True])
def test_the_runs_thread_count_reaches_the_packages_backends_whatever_the_environment_says(monkeypatch, training):
    """GRU_NUM_THREADS is a user's default; a benchmark of --threads N must run N (here: a bad value, ignored)."""
    if not gru.backend_available("cython"):
        pytest.skip("the cython backend is not built")
    seen = []
    backend = gru.get_backend("cython")
    original = backend.thread_count
    monkeypatch.setattr(backend, "thread_count", lambda requested: seen.append(requested) or original(requested))
    monkeypatch.setenv("GRU_NUM_THREADS", "abc")
    report = _quick_run(bench.resolve_implementations(["cython"]), threads=1, training=training)
    assert [r["status"] for r in report["cases"][0]["results"]] == ["ok"]
    assert seen and set(seen) == {1}
