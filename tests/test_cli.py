"""The ``gru`` command: ``backends`` and ``conformance`` (``demo``: test_demo.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

import pytest

import gru
from gru import _registry
from gru.cli import main


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("GRU_BACKEND", raising=False)
    _registry.refresh()
    yield
    _registry.refresh()


def numpy_entry_point() -> EntryPoint:
    return next(ep for ep in entry_points(group="gru.backends") if ep.name == "numpy" and ep.dist.name == "gru")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRU_BACKEND"}
    return subprocess.run(
        [sys.executable, "-m", "gru.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def backend_rows(text: str) -> dict[str, list[str]]:
    """`gru backends` rows by name: [available, device, priority, details]."""
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["backend", "available", "device", "priority"]
    rows = {}
    for line in lines[1:]:
        if line.strip().startswith("note:"):
            continue
        name, available, device, priority, details = line.split(maxsplit=4)
        rows[name] = [available, device, priority, details]
    return rows


# -- gru backends -----------------------------------------------------------------------------


def test_backends_lists_numpy(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    rows = backend_rows(out)
    assert rows["numpy"][:3] == ["yes", "cpu", "0"]
    assert "gru.backends.numpy:NumpyBackend" in rows["numpy"][3]
    assert set(rows) == {info.name for info in gru.list_backends()}


def test_backends_explains_broken_and_duplicate_plugins(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "gru_cli_broken_plugin.py").write_text("raise ImportError('libfoo.so.1 not found')\n")
    broken = EntryPoint(name="broken", value="gru_cli_broken_plugin:Plugin", group="gru.backends")
    twin = EntryPoint(name="numpy", value="gru_cli_broken_plugin:Other", group="gru.backends")
    with pytest.warns(RuntimeWarning, match="registered twice"):
        _registry.refresh(entry_points_override=[numpy_entry_point(), broken, twin])
    try:
        assert main(["backends"]) == 0
    finally:
        sys.modules.pop("gru_cli_broken_plugin", None)
    out = capsys.readouterr().out
    rows = backend_rows(out)
    assert rows["broken"][:3] == ["no", "-", "-"]
    assert "ImportError: libfoo.so.1 not found" in rows["broken"][3]
    assert rows["numpy"][0] == "yes"
    notes = [line.strip() for line in out.splitlines() if line.strip().startswith("note:")]
    assert len(notes) == 1 and "gru_cli_broken_plugin:Other" in notes[0]


def test_backends_in_a_subprocess():
    proc = run_cli("backends", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = backend_rows(proc.stdout)
    assert rows["numpy"][:3] == ["yes", "cpu", "0"]
    assert "entry point 'gru.backends.numpy:NumpyBackend' of gru" in rows["numpy"][3]


# -- gru demo: tests/test_demo.py -------------------------------------------------------------


# -- gru conformance --------------------------------------------------------------------------


def test_conformance_passes_pytest_args_after_double_dash():
    proc = run_cli("conformance", "numpy", "--", "-x", "-q", "-k", "golden")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dots = re.search(r"^(\.+)", proc.stdout, re.MULTILINE)
    assert dots, proc.stdout[-2000:]  # tests ran (pytest returns 5 when none do)
    assert len(dots.group(1)) < 100  # -k reached pytest: only the golden tests ran, not all of the suite


def test_conformance_rejects_pytest_options_without_double_dash():
    proc = run_cli("conformance", "numpy", "-x", timeout=60)
    assert proc.returncode != 0
    assert "unrecognized arguments: -x" in proc.stderr


def test_conformance_unknown_backend_fails():
    proc = run_cli("conformance", "nosuchbackend", timeout=60)
    assert proc.returncode != 0
    assert "nosuchbackend" in proc.stdout + proc.stderr


def test_unknown_command_and_missing_command_exit_with_usage(capsys):
    for argv in (["nosuchcommand"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "usage: gru" in capsys.readouterr().err


def test_bench_gpu_without_a_usable_gpu_says_why_and_exits_2(capsys, tmp_path):
    from gru.backends.cupy import CupyBackend

    if CupyBackend().available() is True:
        pytest.skip("a usable GPU is here: gpu_check.sh runs the GPU benchmark")
    assert main(["bench-gpu", "--json", str(tmp_path / "gpu.json")]) == 2
    err = capsys.readouterr().err
    assert "gru bench-gpu: the cupy backend cannot run here" in err
    assert not (tmp_path / "gpu.json").exists()  # nothing half-written


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
        (["--warmup", "-1"], "--warmup: expected an integer >= 0, got -1"),
        (["--budget", "0"], "--budget: expected a number of seconds > 0, got 0"),
    ],
)
def test_bench_gpu_checks_its_arguments_before_the_gpu(capsys, tmp_path, extra, message):
    assert main(["bench-gpu", "--json", str(tmp_path / "gpu.json"), *extra]) == 2
    assert capsys.readouterr().err == f"gru bench-gpu: error: {message}\n"
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("others", [["--sweep"], ["--crossover", "--resident"]])
def test_bench_gpu_train_goes_alone(capsys, tmp_path, others):
    assert main(["bench-gpu", "--json", str(tmp_path / "gpu.json"), "--train", *others]) == 2
    given = ", ".join(others)
    assert capsys.readouterr().err == (
        f"gru bench-gpu: error: --train: expected alone (it times training only), got it with {given}\n"
    )


def test_bench_gpu_refuses_a_results_file_it_cannot_write(capsys, tmp_path):
    assert main(["bench-gpu", "--json", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"gru bench-gpu: error: --json: expected a file name, got the directory {str(tmp_path)!r}\n"
    )


def test_bench_gpu_requires_a_results_file(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-gpu"])
    assert exit_info.value.code == 2
    assert "--json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["bench", "--quick", "--json"], ["bench-gpu", "--json"], ["demo", "--out"]],
)
def test_an_output_that_is_a_fifo_is_refused_without_blocking(capsys, tmp_path, command):
    """Probing an existing output by opening it would block on a FIFO until something reads it."""
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    assert main([*command, str(fifo)]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: {command[-1]}: expected a regular file (or a new one), got a FIFO: {str(fifo)!r}\n"
    )


@pytest.mark.parametrize("command", [["backends"], ["demo", "--steps", "1"], ["bench", "--quick"]])
def test_arguments_after_a_double_dash_are_refused_where_nothing_takes_them(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([*command, "--", "--threads", "0"])
    assert info.value.code == 2
    assert "arguments after --: only 'gru conformance' takes them (for pytest), got ['--threads', '0']" in (
        capsys.readouterr().err
    )
