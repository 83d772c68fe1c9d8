"""Baselines' pytest glue: the ini, which collected test owns which file, setup errors, the improved list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from syrupy.location import PyTestLocation

from ..gates.markers import gates_of
from ..metrics import BASELINE_METRICS
from ..tolerances import TOLERANCE_INI, ToleranceError, parse_tolerance_ini
from .extension import BaselineExtension
from .gate import IMPROVED_PROPERTY, MISSING_PROPERTY
from .settings import SETTINGS_KEY, BaselineSettings, model_name

FALLBACK_INI = "quant_baseline_fallback"


def add_ini(parser: pytest.Parser) -> None:
    parser.addini(TOLERANCE_INI, "baseline tolerances, one '[cpu:|cuda:]metric = number' per line; metrics: "
                  + ", ".join(f"{m.key} (default cpu {m.defaults['cpu']:g}, cuda {m.defaults['cuda']:g})"
                              for m in BASELINE_METRICS), type="linelist", default=[])
    parser.addini(FALLBACK_INI, "on a GPU kind with no baselines of its own: the hardware key (a folder under "
                  "<baseline dir>/<model>/) whose quality baselines gate quality; default: the newest file of another "
                  "CUDA kind", default="")


class BaselinePlugin:
    """Collection-time bookkeeping of which tests own which baseline files, setup checks, and the
    terminal summary's list of baselines that improved beyond their tolerance."""

    def __init__(self, config: pytest.Config, baseline_dir: Path, device: str, eval_text: Path, recipes: list[str],
                 sharded: bool = False):
        root = baseline_dir if baseline_dir.is_absolute() else config.invocation_params.dir / baseline_dir
        self.config = config
        try:
            tolerances = parse_tolerance_ini(config.getini(TOLERANCE_INI))
        except ToleranceError as exc:
            raise pytest.UsageError(str(exc)) from None
        fallback = str(config.getini(FALLBACK_INI) or "").strip() or None
        if fallback is not None and (fallback == "cpu" or "/" in fallback or fallback.startswith(".")):
            raise pytest.UsageError(f"ini {FALLBACK_INI} = {fallback!r}: expected a GPU hardware key, a folder name "
                                    "under <baseline dir>/<model>/ such as nvidia-h100-80gb-hbm3")
        self.settings = BaselineSettings(root=root, device=device, rootpath=config.rootpath, eval_text=eval_text,
                                         recipes=frozenset(recipes), sharded=sharded, ini_tolerances=tolerances,
                                         fallback_hardware=fallback)
        config.stash[SETTINGS_KEY] = self.settings
        self.errors: dict[str, str] = {}
        self.improved: list[str] = []
        self.missing: dict[str, int] = {}  # the one line for a GPU kind without baselines -> tests it failed

    def _gated(self, item: pytest.Item) -> bool:
        return bool(gates_of(item).baseline)

    def _own(self, item: pytest.Item) -> None:
        """Record which baseline file a collected test owns: such a file is never unused."""
        model = model_name(item)
        if model is not None:
            name = BaselineExtension.get_snapshot_name(test_location=PyTestLocation(item))
            self.settings.owners.setdefault((model, name), []).append(item.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A module skipped at collection (``importorskip`` of a library this runner lacks) or failing to import:
        the baselines of its tests cannot be told from unused ones, so none is called unused this session."""
        if report.outcome in ("skipped", "failed") and report.nodeid:
            self.settings.incomplete.append(report.nodeid)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            if isinstance(item, pytest.Function) and self._gated(item):
                self._own(item)

    # last, so that markers added by conftest files' own collection hooks are seen
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        has_syrupy = self.config.pluginmanager.hasplugin("syrupy")
        for item in items:
            if not isinstance(item, pytest.Function) or not self._gated(item):
                continue
            if not has_syrupy:
                self.errors[item.nodeid] = "vs='baseline' needs syrupy's pytest plugin, which is disabled here"
                continue
            if "snapshot" not in item.fixturenames:
                item.fixturenames.append("snapshot")
            self._own(item)
        for (model, name), nodeids in self.settings.owners.items():
            if len(nodeids) > 1:
                for nodeid in nodeids:
                    self.errors[nodeid] = (f"tests {', '.join(nodeids)} would share the baseline file "
                                           f"{model}/<hardware>/{name}.json: rename one of them")

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        error = self.errors.get(item.nodeid)
        if error:
            pytest.fail(error, pytrace=False)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":  # every phase's report carries the item's properties
            return
        for key, value in getattr(report, "user_properties", ()):
            if key == IMPROVED_PROPERTY:
                self.improved.extend(value)
            elif key == MISSING_PROPERTY:
                self.missing[value] = self.missing.get(value, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.settings.incomplete and getattr(self.config.option, "update_snapshots", False) and self.config.get_verbosity() > -2:
            terminalreporter.write_line(f"pytest-quant: no baseline was called unused or deleted: "
                                        f"{', '.join(self.settings.incomplete)} skipped or failed at collection")
        for line, tests in self.missing.items():
            terminalreporter.write_line(f"pytest-quant: {line} ({tests} test{'s' if tests != 1 else ''})", red=True)
        if self.improved and self.config.get_verbosity() > -2:
            terminalreporter.write_sep("=", "pytest-quant baselines")
            terminalreporter.write_line("improved beyond tolerance: refresh with --snapshot-update")
            for line in self.improved:
                terminalreporter.write_line(f"  {line}")
