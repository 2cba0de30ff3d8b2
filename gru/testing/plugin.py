"""pytest plugin: ``--gru-backend NAME`` picks the backend(s) the conformance suite runs on.

Registered through the ``pytest11`` entry point so the option exists however
the suite is invoked (``pytest --pyargs gru.testing``). Every test that takes
the ``backend_name`` fixture runs once per selected backend; without the
option, once per available backend.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gru")
    group.addoption(
        "--gru-backend",
        action="append",
        default=None,
        metavar="NAME",
        help="run the gru conformance suite on this backend (repeatable; default: every available backend)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check ``--gru-backend`` names once, before collection, with one clear error."""
    chosen = config.getoption("--gru-backend", default=None)
    if not chosen:
        return
    import gru

    for name in chosen:
        try:
            gru.get_backend(name)
        except gru.BackendError as exc:
            raise pytest.UsageError(f"--gru-backend {name}: {exc}") from None


def selected_backends(config: pytest.Config) -> list[str]:
    """The backends the suite runs on: the ``--gru-backend`` ones, else every available one."""
    chosen = config.getoption("--gru-backend")
    if chosen:
        return list(chosen)
    import gru

    return [info.name for info in gru.list_backends() if info.available]


def pytest_report_header(config: pytest.Config) -> list[str]:
    import gru

    lines = []
    for info in gru.list_backends():
        state = "available" if info.available else f"unavailable: {info.reason}"
        lines.append(f"gru backend {info.name}: {state}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", selected_backends(metafunc.config))


INPUT_CHECK = "test_inputs_are_left_unchanged"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Point at the input check when it failed: a backend that writes into its inputs fails most other tests too."""
    failed = [report.nodeid for report in terminalreporter.stats.get("failed", []) if INPUT_CHECK in report.nodeid]
    if not failed:
        return
    terminalreporter.write_sep("=", "gru conformance")
    terminalreporter.write_line(
        f"{INPUT_CHECK} failed ({len(failed)} cases): the backend writes into arrays it must only read "
        "(x, h0, lengths, the weights). Fix that first: the other failures may only follow from it."
    )
