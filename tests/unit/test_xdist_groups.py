"""`make test`'s `--dist loadgroup` keeps an `xdist_group` on one worker, as the modules
that share a loaded model, a llama.cpp server or a proxy need (tests/support/xdist_groups.py
mends pytest-xdist 3.8 on pytest 9.2). A real run of pytest with two workers on a few
files of its own; only the plugins it needs are loaded, so that it starts in a moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
GROUPED = "import pytest\n\npytestmark = pytest.mark.xdist_group('shared')\n"


def module_of(count: int, head: str = "") -> str:
    return head + "".join(f"\ndef test_{n}():\n    pass\n" for n in range(count))


def test_a_group_s_tests_run_on_one_worker_under_their_group_s_name(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    # Far apart in collection order, so that plain load balancing would split them.
    (tmp_path / "test_a.py").write_text(module_of(3, GROUPED))
    (tmp_path / "test_b.py").write_text(module_of(8))
    (tmp_path / "test_c.py").write_text(module_of(3, GROUPED))
    plugins = ("-p", "xdist", "-p", "tests.support.xdist_groups", "-p", "no:cacheprovider")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-n", "2", "--dist", "loadgroup", "-v"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # e.g. "[gw1] [ 42%] PASSED test_a.py::test_0@shared"
    passed = [line.split() for line in run.stdout.splitlines() if " PASSED " in line]
    grouped = [(words[0], words[-1]) for words in passed if "test_b.py" not in words[-1]]
    assert len(passed) == 14
    assert len(grouped) == 6
    assert all(test.endswith("@shared") for _, test in grouped)
    assert len({worker for worker, _ in grouped}) == 1, grouped
