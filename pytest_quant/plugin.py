"""pytest glue: options and ini twins, markers, the quant fixtures, gating and the summary.

Loaded into every pytest run of a repository that installs pytest-quant, so it imports no heavy
library: torch, transformers and the backends load only when a quant fixture is used.
"""

from __future__ import annotations

import os
import pytest

from . import baselines, gates, report
from .options import QuantOptions, add_options
from .recipes import BUILTIN_RECIPES, RecipeError, load_user_recipes, select
from .session import Pair, QuantModel, QuantSession

SESSION_KEY = pytest.StashKey["QuantSession"]()
LIMITS_KEY = pytest.StashKey["list[gates.Limits]"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    baselines.add_ini(parser)


def _check_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise pytest.UsageError(
            f"--quant-gpu: no usable CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
            f"reports torch.cuda.is_available() = False"
            + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise pytest.UsageError(
            f"--quant-device {device}: only {torch.cuda.device_count()} CUDA device(s) found "
            f"({', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))})"
        )


def _available_recipes(config: pytest.Config) -> dict:
    try:
        user = load_user_recipes(config.rootpath / "pyproject.toml")
    except RecipeError as exc:
        raise pytest.UsageError(str(exc)) from None
    return {**BUILTIN_RECIPES, **user}


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, spec in gates.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {spec.help}")
    config.addinivalue_line("markers", "quant_gpu: the test needs --quant-gpu (it skips without it)")
    options = QuantOptions.from_config(config)
    if options.gpu:
        _check_cuda(options.device)
    available = _available_recipes(config)
    try:
        if options.recipe_names is None:
            from . import backends

            recipes = [
                r for r in available.values()
                if not backends.missing_requirements(r.backend) and backends.supports(r.backend, options.device)
            ]
        else:
            recipes = select(options.recipe_names, available)
    except RecipeError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = QuantSession(options, recipes, config)
    config.pluginmanager.register(SummaryCollector(config), "quant-summary")
    # baselines: vs="baseline" markers compare with <baseline dir>/<model>/<hardware>/<test id>.json
    config.pluginmanager.register(
        baselines.BaselinePlugin(config, options.baseline_dir, options.device, options.eval_text, [r.name for r in recipes]),
        "quant-baselines",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "quant_pair" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION_KEY]
    metafunc.parametrize("quant_pair", session.pairs, ids=[p.id for p in session.pairs], indirect=True, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Learn which reference metrics the collected markers need, so the reference is measured once."""
    quant = config.stash[SESSION_KEY]
    needs: set[str] = set()
    for item in items:
        for mark in item.iter_markers():
            if mark.name in gates.MARKERS:
                try:
                    needs |= gates.parse(gates.MARKERS[mark.name], mark.args, mark.kwargs).reference_needs
                except gates.MarkerError:
                    pass  # reported when that test is set up
    quant.reference_needs = frozenset(needs)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    quant = item.config.stash[SESSION_KEY]
    if item.get_closest_marker("quant_gpu") and not quant.options.gpu:
        pytest.skip("needs --quant-gpu")
    limits = []
    for mark in item.iter_markers():
        if mark.name not in gates.MARKERS:
            continue
        try:
            limits.append(gates.parse(gates.MARKERS[mark.name], mark.args, mark.kwargs))
        except gates.MarkerError as exc:
            pytest.fail(str(exc), pytrace=False)
    if limits and "quant_model" not in getattr(item, "fixturenames", ()):
        pytest.fail(
            f"@pytest.mark.{limits[0].marker} gates a quantized model: add the quant_model fixture to {item.name}",
            pytrace=False,
        )
    item.stash[LIMITS_KEY] = limits


@pytest.fixture(scope="session")
def quant_pair(request: pytest.FixtureRequest) -> Pair:
    """One model x recipe (parametrized by pytest-quant); skips when its backend is missing."""
    if not hasattr(request, "param"):
        pytest.fail("quant_pair is parametrized by pytest-quant; use the quant_model fixture", pytrace=False)
    pair: Pair = request.param
    quant = request.config.stash[SESSION_KEY]
    reason = quant.unavailable_reason(pair)
    if reason:
        if quant.options.strict:
            pytest.fail(f"{reason} (--quant-strict)", pytrace=False)
        pytest.skip(reason)
    return pair


@pytest.fixture(scope="session")
def quant_recipe(quant_pair: Pair):
    """The recipe of the current model x recipe."""
    return quant_pair.recipe


@pytest.fixture(scope="session")
def quant_model(quant_pair: Pair, request: pytest.FixtureRequest):
    """The model loaded under the current recipe, once per session; released before the next loads."""
    quant: QuantSession = request.config.stash[SESSION_KEY]
    qm = quant.open(quant_pair)
    yield qm
    quant.close(qm)


@pytest.fixture(scope="session")
def quant_reference(quant_pair: Pair, request: pytest.FixtureRequest):
    """The unquantized reference of the current model: its measurements (computed once per session)."""
    quant: QuantSession = request.config.stash[SESSION_KEY]
    quant.ensure_reference(quant_pair.model)
    return quant.metrics(Pair(quant_pair.model, BUILTIN_RECIPES["reference"]))


def quant_session(config: pytest.Config) -> QuantSession:
    return config.stash[SESSION_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    qm: QuantModel | None = getattr(item, "funcargs", {}).get("quant_model")
    if qm is None:
        return result
    limits: list[gates.Limits] = item.stash.get(LIMITS_KEY, [])
    needs = frozenset().union(*(l.needs for l in limits)) if limits else frozenset()
    if quant_session(item.config).options.report is not None:
        needs = needs | frozenset(gates.NEEDS)  # a report shows every figure of every recipe
    reference_needs = frozenset().union(*(l.reference_needs for l in limits)) if limits else frozenset()
    metrics = qm.measure(*needs, reference_needs=reference_needs)
    item.user_properties.extend(report.properties(metrics, qm.state))
    violations = [v for limit in limits for v in gates.check(limit, metrics)]
    violations += baselines.check(item, limits, metrics)  # vs="baseline" markers, through syrupy
    if violations:
        item.add_report_section("call", "quant metrics", report.detail(metrics, qm.state))
        pytest.fail("\n".join(v.reason for v in violations), pytrace=False)
    return result


class SummaryCollector:
    """Gathers each test's metrics from its report (so it works under xdist, where reports arrive
    from workers) and prints the summary table; writes --quant-report and $GITHUB_STEP_SUMMARY."""

    def __init__(self, config: pytest.Config):
        from . import report_files

        self.config = config
        self.rows = report.Rows()
        # a bad --quant-report suffix is a usage error now, at start-up, not after the run
        self.files = report_files.ReportFiles(config, config.stash[SESSION_KEY].options)

    def pytest_runtest_logreport(self, report) -> None:
        self.rows.add(report)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.rows.pairs and self.config.get_verbosity() > -2:
            terminalreporter.write_sep("=", "pytest-quant summary")
            for line in report.table(self.rows):
                terminalreporter.write_line(line)
        for line in self.files.write(self.rows):
            if self.config.get_verbosity() > -2:
                terminalreporter.write_line(line)
