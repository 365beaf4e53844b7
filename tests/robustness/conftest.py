"""Shared by the robustness tests: a way to show the run's figures in a plain `-q` run."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Hypothesis keeps a cache (constants, unicode tables) in ./.hypothesis; keep it out of the work tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "gistqa-robustness-hypothesis"))


@pytest.fixture(scope="session")
def say(pytestconfig):
    """say(text): write a line to the terminal past pytest's output capture (figures, not assertions)."""

    def write(text: str) -> None:
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(f"\n[robustness] {text}")
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n[robustness] {text}")

    return write
