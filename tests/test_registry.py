"""The backend registry: entry-point discovery, lazy loading, broken plugins, selection."""

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
from gru.backends import Backend, Capabilities, ForwardRequest
from gru.backends.numpy import NumpyBackend

GROUP = "gru.backends"


def numpy_entry_points() -> list[EntryPoint]:
    """The built-in numpy backend's entry point, as the gru distribution declares it."""
    eps = [ep for ep in entry_points(group=GROUP) if ep.dist is not None and ep.dist.name == "gru"]
    return [ep for ep in eps if ep.name == "numpy"]


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Every test starts from the real registry, without GRU_BACKEND, and leaves it restored."""
    monkeypatch.delenv("GRU_BACKEND", raising=False)
    _registry.refresh()
    yield
    _registry.refresh()


@pytest.fixture
def numpy_only():
    """A registry holding only the built-in numpy backend (other built-ins and plugins left out)."""
    _registry.refresh(entry_points_override=numpy_entry_points())


class Recording(NumpyBackend):
    """The NumPy maths with chosen capabilities, counting the calls it runs."""

    def __init__(self, **capabilities):
        self.capabilities = Capabilities(**capabilities)
        self.calls = 0

    def forward(self, request):
        self.calls += 1
        return super().forward(request)


def x32(T=4, B=2, I=3):
    return np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")


# -- discovery and laziness ---------------------------------------------------------------


def test_numpy_backend_is_discovered_through_its_entry_point():
    declared = {ep.name: ep for ep in entry_points(group=GROUP)}
    assert declared["numpy"].value == "gru.backends.numpy:NumpyBackend"
    assert declared["numpy"].dist.name == "gru"

    rows = {info.name: info for info in gru.list_backends()}
    numpy_row = rows["numpy"]
    assert numpy_row.available is True
    assert numpy_row.reason is None
    assert "entry point" in numpy_row.origin
    assert "gru.backends.numpy:NumpyBackend" in numpy_row.origin
    assert numpy_row.capabilities.device == "cpu"
    assert {"float32", "float64"} <= numpy_row.capabilities.dtypes
    assert numpy_row.notes == ()

    backend = gru.get_backend("numpy")
    assert isinstance(backend, NumpyBackend)
    assert backend.name == "numpy"
    assert gru.get_backend("numpy") is backend  # loaded once


def test_importing_gru_loads_no_backend_module():
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gru
        from gru import _registry

        heavy = ("gru.backends.numpy", "gru.backends.numpy.backend", "gru.backends.cython", "scipy", "torch", "cupy")
        def loaded():
            return [m for m in heavy if m in sys.modules]

        assert "gru.backends._base" in sys.modules  # the API needs the protocol, nothing more
        assert loaded() == [], loaded()
        _registry._table()                 # discovery reads entry-point metadata only
        assert loaded() == [], loaded()
        layer = gru.GRU(2, 3, seed=0)      # building a layer selects nothing yet
        assert loaded() == [], loaded()
        layer(np.zeros((4, 2), "float32"), backend="numpy")
        assert "gru.backends.numpy" in sys.modules
        assert "torch" not in sys.modules  # naming a backend loads only that one
        print("lazy ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRU_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "lazy ok" in proc.stdout


def test_real_distributions_broken_and_duplicate(tmp_path):
    """End to end: a third-party distribution on sys.path with a broken plugin and a clash with 'numpy'."""
    site = tmp_path / "site"
    dist_info = site / "gru_fakeplugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: gru-fakeplugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[gru.backends]\nbroken = gru_fakeplugin_broken:Plugin\nnumpy = gru_fakeplugin_dup:Plugin\n"
    )
    (site / "gru_fakeplugin_broken.py").write_text("raise ImportError('libfoo.so.1 not found')\n")
    (site / "gru_fakeplugin_dup.py").write_text("raise AssertionError('the shadowed plugin must not be imported')\n")
    script = textwrap.dedent(
        """
        import json, sys, warnings
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import gru
            rows = {r.name: r for r in gru.list_backends()}
        out, h = gru.GRU(2, 3, seed=0)(np.zeros((4, 2), "float32"))
        try:
            gru.get_backend("broken")
            error = None
        except gru.BackendUnavailableError as exc:
            error = str(exc)
        print(json.dumps({
            "warnings": [str(w.message) for w in caught],
            "numpy": [rows["numpy"].available, rows["numpy"].origin, list(rows["numpy"].notes)],
            "broken": [rows["broken"].available, rows["broken"].reason, rows["broken"].origin],
            "dup_imported": "gru_fakeplugin_dup" in sys.modules,
            "shape": list(out.shape),
            "error": error,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRU_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    numpy_available, numpy_origin, numpy_notes = report["numpy"]
    assert numpy_available is True
    assert "of gru 0.1.0" in numpy_origin  # the built-in won
    assert any("gru_fakeplugin_dup:Plugin" in note and "gru-fakeplugin 0.1" in note for note in numpy_notes)
    assert any("'numpy' is registered twice" in w for w in report["warnings"])
    assert report["dup_imported"] is False

    broken_available, broken_reason, broken_origin = report["broken"]
    assert broken_available is False
    assert "ImportError" in broken_reason and "libfoo.so.1 not found" in broken_reason
    assert "gru-fakeplugin 0.1" in broken_origin
    assert "libfoo.so.1 not found" in report["error"]
    assert report["shape"] == [4, 3]


# -- broken plugins -------------------------------------------------------------------------

WORKING_BUT_NEVER_RUN = textwrap.dedent(
    """
    from gru.backends import Capabilities
    from gru.backends.numpy import NumpyBackend

    class Plugin(NumpyBackend):
        capabilities = Capabilities(priority=1000)

        def forward(self, request):
            raise AssertionError("a broken backend was run")
    """
)

BROKEN_PLUGINS = {
    "raises-on-import": ("raise ImportError('libfoo.so.1: cannot open shared object file')\n", "Plugin", False),
    "missing-attribute": ("X = 1\n", "Plugin", False),
    "not-a-backend": ("Plugin = 42\n", "Plugin", False),
    "not-a-backend-class": ("class Plugin:\n    pass\n", "Plugin", False),
    "init-raises": (
        "from gru.backends.numpy import NumpyBackend\n"
        "class Plugin(NumpyBackend):\n"
        "    def __init__(self):\n"
        "        raise OSError('no license server')\n",
        "Plugin",
        False,
    ),
    "available-raises": (
        WORKING_BUT_NEVER_RUN + "\n    def available(self):\n        raise RuntimeError('CUDA driver too old')\n",
        "Plugin",
        True,
    ),
    "available-reason": (
        WORKING_BUT_NEVER_RUN + "\n    def available(self):\n        return 'needs an AVX-512 CPU'\n",
        "Plugin",
        True,
    ),
    "available-false": (
        WORKING_BUT_NEVER_RUN + "\n    def available(self):\n        return False\n",
        "Plugin",
        True,
    ),
}

EXPECTED_REASON = {
    "raises-on-import": ["failed to load", "ImportError", "libfoo.so.1: cannot open shared object file"],
    "missing-attribute": ["failed to load", "AttributeError"],
    "not-a-backend": ["failed to load", "TypeError", "42", "not a gru.backends.Backend"],
    "not-a-backend-class": ["failed to load", "not a gru.backends.Backend"],
    "init-raises": ["failed to load", "OSError", "no license server"],
    "available-raises": ["RuntimeError", "CUDA driver too old"],
    "available-reason": ["needs an AVX-512 CPU"],
    "available-false": ["returned False"],
}


@pytest.fixture(params=sorted(BROKEN_PLUGINS))
def broken(request, plugin):
    """A registry of the built-ins plus one broken plugin named 'broken'; yields the case."""
    source, attr, loads = BROKEN_PLUGINS[request.param]
    ep = plugin(source, name="broken", attr=attr)
    _registry.refresh(entry_points_override=[*numpy_entry_points(), ep])
    return request.param, loads


def test_broken_plugin_is_listed_with_its_reason(broken):
    case, loads = broken
    rows = {info.name: info for info in gru.list_backends()}  # must not raise
    assert rows["numpy"].available is True
    row = rows["broken"]
    assert row.available is False
    for fragment in EXPECTED_REASON[case]:
        assert fragment in row.reason
    # a plugin that loaded reports its capabilities even when it cannot run here
    assert (row.capabilities is not None) is loads
    assert "entry point" in row.origin


def test_broken_plugin_get_backend_raises_with_original_error(broken):
    case, _ = broken
    with pytest.raises(gru.BackendUnavailableError, match="'broken' is unavailable") as info:
        gru.get_backend("broken")
    for fragment in EXPECTED_REASON[case]:
        assert fragment in str(info.value)
    assert not isinstance(info.value, ValueError)  # "this machine cannot", not "you asked wrongly"
    # asking again gives the same answer (the failure is remembered, not re-raised differently)
    with pytest.raises(gru.BackendUnavailableError):
        gru.get_backend("broken")


def test_backend_available_is_false_for_a_broken_plugin(broken):
    assert gru.backend_available("broken") is False


def test_backend_available_loads_only_the_plugin_asked_about(plugin):
    other = plugin("raise RuntimeError('must not be imported')\n", name="other")
    _registry.refresh(entry_points_override=[*numpy_entry_points(), other])
    assert gru.backend_available("numpy") is True
    assert gru.backend_available("no-such-backend") is False
    assert other.value.split(":")[0] not in sys.modules  # "other" was never imported
    with pytest.raises(TypeError, match="backend: expected a backend name"):
        gru.backend_available(3)


def test_broken_plugin_is_never_selected(broken):
    layer = gru.GRU(3, 4, seed=0)
    x = x32()
    output, h_n = layer(x)  # auto: the broken plugin (priority 1000 when it loads) must be skipped
    expected, expected_h = layer(x, backend="numpy")
    np.testing.assert_array_equal(output, expected)
    np.testing.assert_array_equal(h_n, expected_h)
    with pytest.raises(gru.BackendUnavailableError):
        layer(x, backend="broken")


def test_availability_is_checked_once(plugin):
    ep = plugin(
        """
        from gru.backends.numpy import NumpyBackend

        CHECKS = []

        class Plugin(NumpyBackend):
            def available(self):
                CHECKS.append(1)
                return True
        """,
        name="counted",
    )
    _registry.refresh(entry_points_override=[*numpy_entry_points(), ep])
    module = ep.value.split(":")[0]
    assert module not in sys.modules  # discovery imports nothing
    gru.list_backends()
    gru.get_backend("counted")
    gru.GRU(3, 4, seed=0)(x32())
    assert sys.modules[module].CHECKS == [1]


def test_duplicate_name_builtin_wins_and_is_noted(plugin):
    impostor = plugin("raise AssertionError('the shadowed plugin must not be imported')\n", name="numpy")
    with pytest.warns(RuntimeWarning, match="'numpy' is registered twice"):
        _registry.refresh(entry_points_override=[impostor, *numpy_entry_points()])  # impostor listed first
    rows = {info.name: info for info in gru.list_backends()}
    assert rows["numpy"].available is True
    assert "gru.backends.numpy:NumpyBackend" in rows["numpy"].origin
    assert len(rows["numpy"].notes) == 1
    assert impostor.value in rows["numpy"].notes[0] and "ignored" in rows["numpy"].notes[0]
    assert isinstance(gru.get_backend("numpy"), NumpyBackend)
    assert impostor.value.split(":")[0] not in sys.modules


def test_duplicate_third_party_names_first_wins(plugin):
    source = "from gru.backends.numpy import NumpyBackend\nclass Plugin(NumpyBackend):\n    pass\n"
    first, second = plugin(source, name="twin"), plugin(source, name="twin")
    with pytest.warns(RuntimeWarning, match="'twin' is registered twice"):
        _registry.refresh(entry_points_override=[*numpy_entry_points(), first, second])
    row = next(info for info in gru.list_backends() if info.name == "twin")
    assert first.value in row.origin
    assert second.value in row.notes[0]


# -- register_backend -----------------------------------------------------------------------


def test_register_backend_instance(numpy_only):
    backend = Recording(priority=-5)
    returned = gru.register_backend("mine", backend)
    assert returned is backend
    assert backend.name == "mine"
    assert gru.get_backend("mine") is backend
    row = next(info for info in gru.list_backends() if info.name == "mine")
    assert row.available is True and row.origin == "register_backend()"
    gru.GRU(3, 4, seed=0, backend="mine")(x32())
    assert backend.calls == 1


class Sloppy(NumpyBackend):
    """The NumPy maths, but one result comes back changed: float64, a step short, or gradients missing."""

    def __init__(self, flaw):
        self.capabilities = Capabilities(priority=-1, training=True)
        self.flaw = flaw

    def forward(self, request):
        result = super().forward(request)
        if self.flaw == "float64":
            result.output = result.output.astype(np.float64)
        elif self.flaw == "short":
            result.h_n = result.h_n[:, :-1]
        elif self.flaw == "no gates":
            result.gates = None
        elif self.flaw == "list":
            result.h_n = result.h_n.tolist()
        return result

    def backward(self, request, result, d_output, d_h_n):
        grads = super().backward(request, result, d_output, d_h_n)
        if self.flaw == "gradients":
            grads.weights = grads.weights[:-1]
        return grads


@pytest.mark.parametrize(
    ("flaw", "message"),
    [
        ("float64", r"forward result whose output is \(4, 2, 4\) float64; expected \(4, 2, 4\) float32"),
        ("short", r"forward result whose h_n is \(1, 1, 4\) float32; expected \(1, 2, 4\) float32"),
        ("gradients", r"backward result with 0 weight gradient sets; expected 1"),
        ("no gates", r"forward result whose gates is None; expected a \(1, 3, 4, 2, 4\) float32 array"),
        ("list", r"forward result whose h_n is a list, not an array; expected a \(1, 2, 4\) float32 array"),
    ],
)
def test_a_backend_returning_wrong_shapes_or_dtypes_is_caught(numpy_only, flaw, message):
    """What a backend returns reaches the caller only with the request's shapes and dtype."""
    gru.register_backend("sloppy", Sloppy(flaw))
    layer = gru.GRU(3, 4, seed=0, backend="sloppy")
    with pytest.raises(gru.BackendError, match=rf"^backend 'sloppy' returned a {message}"):
        layer(x32(), train=True, return_gates=flaw == "no gates")
        layer.backward(np.ones((4, 2, 4), "float32"))


def test_register_backend_class(numpy_only):
    class Mine(NumpyBackend):
        pass

    instance = gru.register_backend("mine", Mine)
    assert type(instance) is Mine
    assert gru.get_backend("mine") is instance
    assert instance.name == "mine"


def test_register_backend_duplicate_needs_replace(numpy_only):
    with pytest.raises(ValueError, match=r"name: a backend named 'numpy' is already registered"):
        gru.register_backend("numpy", Recording())
    assert type(gru.get_backend("numpy")) is NumpyBackend  # unchanged
    replacement = gru.register_backend("numpy", Recording(), replace=True)
    assert gru.get_backend("numpy") is replacement
    gru.GRU(3, 4, seed=0, backend="numpy")(x32())
    assert replacement.calls == 1


@pytest.mark.parametrize(
    ("name", "kind"), [("", ValueError), ("auto", ValueError), (None, TypeError), (3, TypeError), (b"numpy", TypeError)]
)
def test_register_backend_bad_name(numpy_only, name, kind):
    with pytest.raises(kind, match=r"^name: expected a non-empty string"):
        gru.register_backend(name, Recording())
    assert sorted(info.name for info in gru.list_backends()) == ["numpy"]


@pytest.mark.parametrize("thing", [object(), NumpyBackend.forward, int, "numpy"])
def test_register_backend_rejects_non_backends(numpy_only, thing):
    with pytest.raises(TypeError, match=r"not a gru\.backends\.Backend"):
        gru.register_backend("mine", thing)
    assert "mine" not in {info.name for info in gru.list_backends()}


# -- choosing a backend ---------------------------------------------------------------------


@pytest.fixture
def alpha_beta(numpy_only):
    """Two registered recording backends; alpha has the higher priority."""
    alpha = gru.register_backend("alpha", Recording(priority=20))
    beta = gru.register_backend("beta", Recording(priority=10))
    return alpha, beta


class AskedForAvailability(Recording):
    """Counts available() calls, and says it is unavailable when told to."""

    def __init__(self, reason=None, **capabilities):
        super().__init__(**capabilities)
        self.asked, self.reason = 0, reason

    def available(self):
        self.asked += 1
        return True if self.reason is None else self.reason


def test_auto_asks_availability_in_priority_order_and_stops_at_the_winner(numpy_only):
    """available() may import torch or CuPy: auto must not ask backends that cannot win (lower, other device)."""
    low = gru.register_backend("low", AskedForAvailability(priority=-5))
    gpu = gru.register_backend("gpu", AskedForAvailability(priority=100, device="cuda"))
    down = gru.register_backend("down", AskedForAvailability("its library is missing", priority=50))
    high = gru.register_backend("high", AskedForAvailability(priority=20))
    gru.GRU(3, 4, seed=0, backend="auto")(x32())
    assert high.calls == 1
    assert (high.asked, down.asked, low.asked, gpu.asked) == (1, 1, 0, 0)


def test_auto_still_explains_every_backend_when_none_can_run(numpy_only):
    gru.register_backend("gpu", AskedForAvailability(priority=100, device="cuda"))
    gru.register_backend("down", AskedForAvailability("its library is missing", priority=50))
    request_kinds = gru.GRU(3, 4, seed=0, backend="auto", dtype="float64")
    gru.register_backend("numpy", AskedForAvailability("switched off", priority=0), replace=True)
    with pytest.raises(gru.UnsupportedRequestError) as info:
        request_kinds(x32().astype("float64"))
    message = str(info.value)
    for said in ("gpu: runs on cuda, the input is on cpu", "down: its library is missing", "numpy: switched off"):
        assert said in message


def test_env_var_sets_the_default(alpha_beta, monkeypatch):
    alpha, beta = alpha_beta
    monkeypatch.setenv("GRU_BACKEND", "beta")
    gru.GRU(3, 4, seed=0)(x32())
    gru.GRUCell(3, 4, seed=0)(x32()[0])
    assert (alpha.calls, beta.calls) == (0, 2)


def test_explicit_backend_beats_env_var(alpha_beta, monkeypatch):
    alpha, beta = alpha_beta
    monkeypatch.setenv("GRU_BACKEND", "beta")
    gru.GRU(3, 4, seed=0, backend="numpy")(x32())  # layer's choice
    gru.GRU(3, 4, seed=0)(x32(), backend="numpy")  # call's choice
    gru.GRU(3, 4, seed=0, backend="beta")(x32(), backend="alpha")  # call beats layer
    assert (alpha.calls, beta.calls) == (1, 0)


def test_empty_env_var_means_auto(alpha_beta, monkeypatch):
    alpha, beta = alpha_beta
    monkeypatch.setenv("GRU_BACKEND", "")
    gru.GRU(3, 4, seed=0)(x32())
    assert (alpha.calls, beta.calls) == (1, 0)


def test_env_var_naming_unknown_backend(alpha_beta, monkeypatch):
    monkeypatch.setenv("GRU_BACKEND", "nosuch")
    with pytest.raises(gru.BackendNotFoundError, match="nosuch"):
        gru.GRU(3, 4, seed=0)(x32())


def test_unknown_backend_name_lists_registered(alpha_beta):
    for call in (
        lambda: gru.get_backend("nosuch"),
        lambda: gru.GRU(3, 4, seed=0, backend="nosuch")(x32()),
        lambda: gru.GRUCell(3, 4, seed=0)(x32()[0], backend="nosuch"),
    ):
        with pytest.raises(gru.BackendNotFoundError) as info:
            call()
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert message.startswith("backend:")
        assert "'nosuch'" in message
        assert "registered: alpha, beta, numpy" in message


def test_get_backend_rejects_non_string():
    with pytest.raises(TypeError, match="backend: expected a backend name"):
        gru.get_backend(3)


def test_auto_picks_highest_priority(alpha_beta):
    alpha, beta = alpha_beta
    gru.GRU(3, 4, seed=0)(x32())
    gru.GRU(3, 4, seed=0, backend="auto")(x32())
    assert (alpha.calls, beta.calls) == (2, 0)


@pytest.mark.parametrize(
    ("fast_lacks", "layer_kwargs", "call_kwargs", "fast_runs"),
    [
        ({}, {}, {}, True),
        ({"reset_before": False}, {"reset_after": False}, {}, False),
        ({"reset_before": False}, {"reset_after": True}, {}, True),
        ({"reset_after": False}, {"reset_after": True}, {}, False),
        ({"dtypes": frozenset({"float64"})}, {"dtype": "float32"}, {}, False),
        ({"dtypes": frozenset({"float64"})}, {"dtype": "float64"}, {}, True),
        ({"gates": False}, {}, {"return_gates": True}, False),
        ({"gates": False}, {}, {}, True),
        ({"lengths": False}, {}, {"lengths": [4, 2]}, False),
        ({"lengths": False}, {}, {"lengths": [4, 4]}, True),  # full lengths are no lengths
        ({"device": "cuda"}, {}, {}, False),
    ],
)
def test_auto_skips_backends_that_cannot_run_the_call(numpy_only, fast_lacks, layer_kwargs, call_kwargs, fast_runs):
    fast = gru.register_backend("fast", Recording(priority=10, **fast_lacks))
    slow = gru.register_backend("slow", Recording(priority=5))
    layer = gru.GRU(3, 4, seed=0, **layer_kwargs)
    layer(x32().astype(layer.dtype), **call_kwargs)
    assert (fast.calls, slow.calls) == ((1, 0) if fast_runs else (0, 1))


def test_auto_with_no_capable_backend_explains_each(numpy_only):
    _registry.refresh(entry_points_override=[])
    gru.register_backend("f64only", Recording(dtypes=frozenset({"float64"})))
    gru.register_backend("gpu", Recording(device="cuda"))
    with pytest.raises(gru.UnsupportedRequestError) as info:
        gru.GRU(3, 4, seed=0)(x32())
    message = str(info.value)
    assert "backend='auto'" in message
    assert "f64only: dtype float32 is not one of ['float64']" in message
    assert "gpu: runs on cuda" in message


def test_explicit_backend_that_lacks_the_dtype(numpy_only):
    only64 = gru.register_backend("only64", Recording(dtypes=frozenset({"float64"}), priority=50))
    with pytest.raises(gru.UnsupportedRequestError, match=r"'only64' cannot run this call: dtype float32") as info:
        gru.GRU(3, 4, seed=0, backend="only64")(x32())
    assert isinstance(info.value, ValueError)
    with pytest.raises(gru.UnsupportedRequestError, match="float32"):
        gru.GRUCell(3, 4, seed=0)(x32()[0], backend="only64")
    assert only64.calls == 0
    gru.GRU(3, 4, seed=0, dtype="float64", backend="only64")(x32().astype("float64"))
    assert only64.calls == 1


def test_explicit_backend_on_the_wrong_device(numpy_only):
    gru.register_backend("gpu", Recording(device="cuda"))
    with pytest.raises(gru.UnsupportedRequestError, match="runs on cuda but the input is on cpu"):
        gru.GRU(3, 4, seed=0, backend="gpu")(x32())


def test_backend_instance_needs_no_registration(numpy_only):
    unregistered = Recording()
    gru.GRU(3, 4, seed=0, backend=unregistered)(x32())
    gru.GRU(3, 4, seed=0)(x32(), backend=unregistered)
    assert unregistered.calls == 2
    assert "numpy" in {info.name for info in gru.list_backends()}


# -- Backend.supports -----------------------------------------------------------------------


def make_request(**overrides) -> ForwardRequest:
    fields = dict(
        x=np.zeros((4, 2, 3), "float32"),
        h0=np.zeros((1, 2, 5), "float32"),
        weights=(),
        lengths=None,
        hidden_size=5,
        num_layers=1,
        num_directions=1,
        reset_after=True,
        return_gates=False,
        dtype="float32",
    )
    fields.update(overrides)
    return ForwardRequest(**fields)


class Bare(Backend):
    def __init__(self, **capabilities):
        self.capabilities = Capabilities(**capabilities)

    def forward(self, request):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("capabilities", "request_fields", "reason"),
    [
        ({}, {}, None),
        ({}, {"dtype": "float64", "reset_after": False, "return_gates": True, "lengths": np.array([1, 4])}, None),
        ({"dtypes": frozenset({"float64"})}, {"dtype": "float32"}, "dtype float32 is not one of ['float64']"),
        ({"dtypes": frozenset({"float64"})}, {"dtype": "float64"}, None),
        ({"dtypes": frozenset({"float32"})}, {"dtype": "float64"}, "dtype float64 is not one of ['float32']"),
        ({"reset_after": False}, {"reset_after": True}, "reset_after=True is not supported"),
        ({"reset_after": False}, {"reset_after": False}, None),
        ({"reset_before": False}, {"reset_after": False}, "reset_after=False (reset-before) is not supported"),
        ({"reset_before": False}, {"reset_after": True}, None),
        ({"lengths": False}, {"lengths": np.array([1, 4])}, "variable lengths are not supported"),
        ({"lengths": False}, {"lengths": None}, None),
        ({"gates": False}, {"return_gates": True}, "return_gates=True is not supported"),
        ({"gates": False}, {"return_gates": False}, None),
    ],
)
def test_supports_default_logic(capabilities, request_fields, reason):
    verdict = Bare(**capabilities).supports(make_request(**request_fields))
    if reason is None:
        assert verdict is True
    else:
        assert verdict == reason


def test_default_available_and_repr():
    backend = Bare()
    assert backend.available() is True
    assert "Bare" in repr(backend)
    backend.name = "bare"
    assert repr(backend) == "<gru backend 'bare'>"


class Raising(NumpyBackend):
    """Raises from inside its own code, forward or backward."""

    def __init__(self, where):
        self.capabilities = Capabilities(priority=-1, training=True)
        self.where = where

    def run_direction(self, x, h0, weights, lengths, **kwargs):
        if self.where == "forward":
            raise IndexError("empty input not handled")
        super().run_direction(x, h0, weights, lengths, **kwargs)

    def backward_direction(self, *args, **kwargs):
        raise ZeroDivisionError("no gradient today")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
@pytest.mark.parametrize("where, kind", [("forward", IndexError), ("backward", ZeroDivisionError)])
def test_an_error_inside_a_backend_keeps_its_type_and_names_the_backend(numpy_only, where, kind):
    gru.register_backend("raising", Raising(where))
    layer = gru.GRU(3, 4, seed=0, backend="raising")
    with pytest.raises(kind) as info:
        layer(x32(), train=True)
        layer.backward(np.ones((4, 2, 4), "float32"))
    assert "(raised inside backend 'raising')" in getattr(info.value, "__notes__", [])


def test_get_backend_auto_says_auto_is_a_choice_not_a_backend():
    with pytest.raises(gru.BackendNotFoundError, match=r"^backend: 'auto' is not a backend but the choice") as info:
        gru.get_backend("auto")
    assert "numpy" in str(info.value)  # and lists the names it does take
