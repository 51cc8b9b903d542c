"""Under CI (``CI=true``) a skipped test fails: CI installs everything the tests need (the test extra, Chromium),
so a skip there hides a broken install. GPU tests (``-m gpu``) still skip: CI has no GPU."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    """Whether this run is CI's (``CI=true`` or ``CI=1``, as CI services set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and under_ci() and item.get_closest_marker("gpu") is None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI ({reason}); CI installs everything this test needs, so the skip hides a "
                           "broken install: see .ci/run")
