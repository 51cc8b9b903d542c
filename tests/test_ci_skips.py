"""A skip under CI is a failure (tests/ci_skips.py), except a GPU test's: CI has no GPU."""

from __future__ import annotations

import pytest

TESTS = '''
import pytest

def test_needs_a_package():
    pytest.importorskip("a_package_the_test_extra_forgot")

@pytest.mark.skipif(True, reason="Debian's chromium is not installed")
def test_needs_a_browser():
    pass

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("no CUDA device")

def test_runs():
    pass
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_fails_under_ci_but_a_gpu_tests(pytester, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-p", "tests.ci_skips")
    if ci:
        result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1)  # the skipif fails in its setup
        result.stdout.fnmatch_lines(["*skipped under CI*a_package_the_test_extra_forgot*"])
    else:
        result.assert_outcomes(passed=1, skipped=3)
