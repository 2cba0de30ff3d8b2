"""Broken plugins, beyond tests/test_registry.py: capability checks that raise or answer nonsense,
malformed capabilities, plugins that exit, and all of them installed at once in a real distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import pytest

import gru
from gru import _registry
from gru.backends import Capabilities
from gru.backends.numpy import NumpyBackend

GROUP = "gru.backends"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("GRU_BACKEND", raising=False)
    _registry.refresh(entry_points_override=numpy_entry_points())
    yield
    _registry.refresh()


def numpy_entry_points() -> list[EntryPoint]:
    builtin = [ep for ep in entry_points(group=GROUP) if ep.dist is not None and ep.dist.name == "gru"]
    return [ep for ep in builtin if ep.name == "numpy"]


def x32(T=4, B=2, I=3):
    return np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")


class Checked(NumpyBackend):
    """The NumPy maths, high priority, with a chosen ``supports`` behaviour; counts the calls it runs."""

    def __init__(self, supports):
        self.capabilities = Capabilities(priority=1000, training=True)
        self._supports = supports
        self.calls = 0

    def supports(self, request):
        return self._supports(request)

    def forward(self, request):
        self.calls += 1
        return super().forward(request)


def boom(request):
    raise RuntimeError("capability table corrupt")


SUPPORTS_ANSWERS = {
    "raises": (boom, "supports() raised RuntimeError: capability table corrupt"),
    "raises-attribute-error": (lambda r: r.no_such_field, "supports() raised AttributeError"),
    "returns-none": (lambda r: None, "supports() returned None instead of True or a reason"),
    "returns-false": (lambda r: False, "supports() returned False instead of True or a reason"),
    "returns-empty": (lambda r: "", "supports() returned '' instead of True or a reason"),
}


@pytest.mark.parametrize("case", sorted(SUPPORTS_ANSWERS))
def test_auto_skips_a_backend_whose_capability_check_fails(case):
    supports, _ = SUPPORTS_ANSWERS[case]
    broken = gru.register_backend("checked", Checked(supports))
    layer = gru.GRU(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = x32()
    output, h_n = layer(x)  # auto: the broken check means "cannot run this call", numpy runs it
    expected, expected_h = layer(x, backend="numpy")
    np.testing.assert_array_equal(output, expected)
    np.testing.assert_array_equal(h_n, expected_h)
    y, _ = layer(x, train=True)  # training calls select the same way
    layer.backward(np.ones_like(y))
    gru.GRUCell(3, 4, seed=0)(x[0])
    gru.onnx.gru(x, *(np.zeros(s, "float32") for s in ((1, 12, 3), (1, 12, 4))))
    assert broken.calls == 0
    row = next(info for info in gru.list_backends() if info.name == "checked")
    assert row.available is True  # it loads and is available: only its per-call check is broken


@pytest.mark.parametrize("case", sorted(SUPPORTS_ANSWERS))
def test_a_failing_capability_check_is_explained(case):
    supports, reason = SUPPORTS_ANSWERS[case]
    _registry.refresh(entry_points_override=[])
    gru.register_backend("checked", Checked(supports))
    with pytest.raises(gru.UnsupportedRequestError) as info:  # auto, nothing else to pick
        gru.GRU(3, 4, seed=0)(x32())
    assert "backend='auto'" in str(info.value) and "checked: " in str(info.value)
    assert reason in str(info.value)
    with pytest.raises(gru.UnsupportedRequestError, match=r"'checked' cannot run this call") as info:  # named
        gru.GRU(3, 4, seed=0, backend="checked")(x32())
    assert reason in str(info.value)


BAD_CAPABILITIES = {
    "none": "capabilities = None",
    "dict": "capabilities = {'device': 'cpu', 'priority': 5}",
    "priority-string": "capabilities = Capabilities(priority='high')",
    "priority-bool": "capabilities = Capabilities(priority=True)",
    "device-none": "capabilities = Capabilities(device=None)",
    "property-raises": "@property\n        def capabilities(self):\n            raise RuntimeError('probe failed')",
}


@pytest.mark.parametrize("case", sorted(BAD_CAPABILITIES))
def test_malformed_capabilities_make_a_plugin_unavailable(plugin, case):
    source = f"""
    from gru.backends import Capabilities
    from gru.backends.numpy import NumpyBackend

    class Plugin(NumpyBackend):
        {BAD_CAPABILITIES[case]}

        def forward(self, request):
            raise AssertionError("a broken backend was run")
    """
    _registry.refresh(entry_points_override=[*numpy_entry_points(), plugin(source)])
    row = next(info for info in gru.list_backends() if info.name == "broken")
    assert row.available is False and "failed to load" in row.reason
    assert ("probe failed" if case == "property-raises" else "not a gru.backends.Capabilities") in row.reason
    gru.GRU(3, 4, seed=0)(x32())  # auto runs numpy
    with pytest.raises(gru.BackendUnavailableError, match="'broken' is unavailable"):
        gru.get_backend("broken")


@pytest.mark.parametrize("case", ["none", "priority-string", "device-none"])
def test_register_backend_rejects_malformed_capabilities(case):
    backend = NumpyBackend()
    backend.capabilities = {"none": None, "priority-string": Capabilities(priority="high"),
                            "device-none": Capabilities(device=None)}[case]  # fmt: skip
    with pytest.raises(TypeError, match=r"^register_backend\(backend=\.\.\.\) .*not a gru\.backends\.Capabilities"):
        gru.register_backend("mine", backend)
    assert "mine" not in {info.name for info in gru.list_backends()}


EXITING = {
    "exits-on-import": ("import sys\nsys.exit(3)\n", "failed to load (SystemExit: 3)"),
    "exits-in-available": (
        "import sys\nfrom gru.backends.numpy import NumpyBackend\n"
        "class Plugin(NumpyBackend):\n    def available(self):\n        sys.exit('no GPU, bye')\n",
        "availability check raised SystemExit: no GPU, bye",
    ),
    "read-only-name": (
        "from gru.backends.numpy import NumpyBackend\n"
        "class Plugin(NumpyBackend):\n    @property\n    def name(self):\n        return 'fixed'\n",
        "failed to load (AttributeError",
    ),
}


@pytest.mark.parametrize("case", sorted(EXITING))
def test_plugins_that_exit_or_half_load_are_contained(plugin, case):
    source, reason = EXITING[case]
    _registry.refresh(entry_points_override=[*numpy_entry_points(), plugin(source)])
    row = next(info for info in gru.list_backends() if info.name == "broken")  # no SystemExit escapes
    assert row.available is False and reason in row.reason
    output, _ = gru.GRU(3, 4, seed=0)(x32())
    assert output.shape == (4, 2, 4)


# -- everything at once, installed for real --------------------------------------------------------

PLUGINS = {
    "raises_on_import": "raise ImportError('libfoo.so.1: cannot open shared object file')\n",
    "not_a_backend": "Plugin = object()\n",
    "registers_junk": "import gru\ngru.register_backend('junk', 42)\nPlugin = None\n",
    "exits": "import sys\nsys.exit(1)\n",
    "reuses_builtin": "raise AssertionError('a shadowed plugin must not even be imported')\n",
    "available_raises": "from gru_fake_common import Base\n"
    "class Plugin(Base):\n    def available(self):\n        raise RuntimeError('CUDA driver too old')\n",
    "supports_raises": "from gru_fake_common import Base\n"
    "class Plugin(Base):\n    def supports(self, request):\n        raise KeyError('dtype table')\n",
    "bad_capabilities": "from gru_fake_common import Base\nclass Plugin(Base):\n    capabilities = None\n",
}
COMMON = """
from gru.backends import Capabilities
from gru.backends.numpy import NumpyBackend

class Base(NumpyBackend):
    capabilities = Capabilities(priority=10**6, training=True)

    def forward(self, request):
        raise AssertionError("a broken backend was run")
"""
EXPECTED = {
    "raises_on_import": "libfoo.so.1",
    "not_a_backend": "not a gru.backends.Backend",
    "registers_junk": "not a gru.backends.Backend",
    "exits": "SystemExit",
    "available_raises": "CUDA driver too old",
    "bad_capabilities": "not a gru.backends.Capabilities",
}


def test_every_kind_of_broken_plugin_installed_at_once(tmp_path):
    """A distribution on sys.path whose entry points are all broken: import gru, `gru backends`, auto."""
    site = tmp_path / "site"
    dist_info = site / "gru_broken_plugins-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: gru-broken-plugins\nVersion: 1.0\n")
    lines = [f"{name} = gru_fake_{name}:Plugin" for name in PLUGINS if name != "reuses_builtin"]
    lines.append("cython = gru_fake_reuses_builtin:Plugin")  # a built-in's name
    (dist_info / "entry_points.txt").write_text("[gru.backends]\n" + "\n".join(lines) + "\n")
    (site / "gru_fake_common.py").write_text(COMMON)
    for name, source in PLUGINS.items():
        (site / f"gru_fake_{name}.py").write_text(source)
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys, warnings
        import numpy as np
        warnings.simplefilter("ignore")
        import gru
        from gru import cli

        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            status = cli.main(["backends"])
        rows = {r.name: [r.available, r.reason, list(r.notes)] for r in gru.list_backends()}
        layer = gru.GRU(3, 4, num_layers=2, bidirectional=True, seed=0)
        x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype("float32")
        y, h = layer(x)  # auto
        y_train, _ = layer(x, train=True)
        grads = layer.backward(np.ones_like(y_train))
        reference = layer(x, backend="numpy")[0]
        print(json.dumps({
            "status": status, "table": table.getvalue(), "rows": rows,
            "close": bool(np.allclose(y, reference, atol=1e-5)), "finite": bool(np.isfinite(grads.input).all()),
            "shadow_imported": "gru_fake_reuses_builtin" in sys.modules,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRU_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == 0
    rows = report["rows"]
    for name, fragment in EXPECTED.items():
        available, reason, _ = rows[name]
        assert available is False, name
        assert fragment in reason, (name, reason)
        assert name in report["table"] and fragment in report["table"]
    assert rows["supports_raises"][0] is True  # available; its per-call check fails, so auto skips it
    assert rows["numpy"][0] is True
    assert any("gru_fake_reuses_builtin:Plugin" in note for note in rows["cython"][2])
    assert report["shadow_imported"] is False
    assert report["close"] and report["finite"]  # auto ran a working backend (cython or numpy) both ways
