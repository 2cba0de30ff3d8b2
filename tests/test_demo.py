"""``gru demo``: the adding problem's data, and smoke runs of the training demo (short sequences, few steps)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gru
from gru import _registry, demo
from gru.cli import main


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("GRU_BACKEND", raising=False)
    _registry.refresh()
    yield
    _registry.refresh()


def test_adding_problem_data():
    x, target, marks = demo.adding_problem(np.random.default_rng(0), 500, 20)
    assert x.shape == (500, 20, 2) and x.dtype == np.float32 and target.shape == (500, 1)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    np.testing.assert_array_equal(markers.sum(axis=1), 2)  # exactly two markers
    assert np.all(marks[:, 0] < 10) and np.all(marks[:, 1] >= 10)  # one in each half
    np.testing.assert_array_equal(np.flatnonzero(markers[0]), marks[0])
    np.testing.assert_allclose(target[:, 0], (values * markers).sum(axis=1), rtol=1e-6)
    # guessing 1 scores about 1/6: the variance of the sum of two U(0, 1)
    assert np.mean((target - 1) ** 2) == pytest.approx(demo.BASELINE_MSE, rel=0.15)


def test_auto_picks_the_highest_priority_training_backend():
    name = demo.training_backend("auto")
    infos = {info.name: info for info in gru.list_backends()}
    assert infos[name].capabilities.training
    assert infos[name].capabilities.priority == max(
        info.capabilities.priority for info in infos.values() if info.available and info.capabilities.training
    )


def test_demo_runs_reports_and_writes_the_figure(capsys, tmp_path):
    out = tmp_path / "figures" / "demo.png"
    args = ["demo", "--seq-len", "12", "--steps", "3", "--hidden", "8", "--seed", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 1  # 3 steps cannot reach the target: reported, exit status 1
    text = capsys.readouterr().out
    assert "adding problem" in text and "backend" in text
    match = re.search(r"did NOT reach test MSE (\d+\.\d+) \(target < 0\.01\) after 3 steps", text)
    assert match, text
    assert float(match[1]) > 0.01
    assert len(re.findall(r"test sequence \d: marked at steps", text)) == 3
    assert f"wrote {out}" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("matplotlib.image").imread(str(out))
    assert image.shape[0] > 500 and image.shape[1] > 500


def test_demo_stops_once_the_target_is_reached(capsys, tmp_path):
    args = ["demo", "--seq-len", "10", "--steps", "200", "--target", "0.5", "--backend", "numpy", "--no-progress"]
    assert main([*args, "--out", ""]) == 0
    text = capsys.readouterr().out
    match = re.search(r"reached test MSE (\d+\.\d+) \(target < 0\.5\) after (\d+) steps .* on backend numpy", text)
    assert match, text
    assert float(match[1]) < 0.5 and int(match[2]) < 200  # stopped early, at an evaluation
    assert "wrote" not in text


def test_demo_is_reproducible_with_a_seed(capsys):
    def run(seed: int) -> str:
        assert main(["demo", "--seq-len", "8", "--steps", "2", "--seed", str(seed), "--out", "", "--no-progress"]) == 1
        return re.sub(r"in \d+\.\d s", "", capsys.readouterr().out)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--backend", "nonexistent", "--out", ""]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert main(["demo", "--seq-len", "1", "--out", ""]) == 2
    assert "--seq-len" in capsys.readouterr().err
    assert main(["demo", "--threads", "-1", "--out", ""]) == 2
    assert "--threads" in capsys.readouterr().err


def test_demo_honours_gru_backend(capsys, monkeypatch):
    monkeypatch.setenv("GRU_BACKEND", "numpy")
    assert main(["demo", "--seq-len", "6", "--steps", "1", "--out", "", "--no-progress", "--threads", "0"]) == 1
    assert "on backend numpy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "nosuch"], "--backend: no backend named 'nosuch' is registered"),
        (["--lr", "-1"], "--lr: expected a learning rate > 0, got -1"),
        (["--lr", "-1e-3"], "--lr: expected a learning rate > 0, got -0.001"),
        (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
        (["--out", "afile/x.png"], "--out: cannot write "),
        (["--out", "x.txt"], "--out: expected a file name ending in one of"),
        (["--out", "figs/"], "--out: expected a file name, got the directory 'figs/'"),  # matplotlib: figs/.png.png
        (["--out", "."], "--out: expected a file name, got the directory '.'"),
        (["--batch", "3000000000"], "--seq-len 4, --batch 3000000000, --hidden 32: a training step would hold"),
        (["--seq-len", "3000000000"], "--seq-len 3000000000, --batch 64, --hidden 32: a training step would hold"),
        (["--hidden", "200000"], "--seq-len 4, --batch 64, --hidden 200000: a training step would hold"),
    ],
)
def test_demo_checks_everything_before_printing_or_training(capsys, tmp_path, monkeypatch, extra, message):
    if "--out" in extra:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(demo, "train_adding", lambda **kwargs: pytest.fail("training started"))
    assert main(["demo", "--seq-len", "4", "--steps", "1", "--out", "", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no header lines before the error
    assert captured.err.startswith(f"gru demo: error: {message}")


def test_demo_names_the_figure_it_wrote(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    args = ["demo", "--seq-len", "4", "--steps", "1", "--hidden", "4", "--backend", "numpy", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "figure")]) == 1
    assert f"wrote {tmp_path / 'figure.png'}\n" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
