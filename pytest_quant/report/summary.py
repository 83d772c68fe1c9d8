"""The session's summary as a pytest plugin object: rows from every test report (so it works under xdist,
where reports arrive from workers), the terminal table, --quant-report and $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import pytest

from .files import ReportFiles
from .rows import Rows, table


class SummaryPlugin:
    def __init__(self, config: pytest.Config, options):
        self.config = config
        self.rows = Rows()
        # a bad --quant-report suffix is a usage error now, at start-up, not after the run
        self.files = ReportFiles(config, options)
        self.interrupted = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.rows.add(report)

    def pytest_keyboard_interrupt(self) -> None:
        self.interrupted = True

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.interrupted:
            self.rows.mark_interrupted()
        if self.rows.pairs and self.config.get_verbosity() > -2:
            terminalreporter.write_sep("=", "pytest-quant summary" + (" (interrupted)" if self.interrupted else ""))
            for line in table(self.rows):
                terminalreporter.write_line(line)
        for line in self.files.write(self.rows):
            if self.config.get_verbosity() > -2:
                terminalreporter.write_line(line)
