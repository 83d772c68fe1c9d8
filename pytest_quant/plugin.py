"""pytest glue: hooks and fixtures only.

Loaded into every pytest run of a repository that installs pytest-quant, so it imports no heavy
library: torch, transformers and the backends load only when a quant fixture is used.
"""

from __future__ import annotations

import pytest

from . import gates, hookspecs, startup, workers
from .backends import BUILTIN_BACKENDS, Registry
from .baselines.plugin import BaselinePlugin, add_ini
from .options import QuantOptions, add_options, value_or_ini
from .recipes import RecipeError, available_recipes
from .report.properties import detail, properties
from .report.summary import SummaryPlugin
from .session import NEEDS, Pair, QuantModel, QuantSession, few_tokens_note

SESSION_KEY = pytest.StashKey[QuantSession]()
MEASURED_KEY = pytest.StashKey["object"]()  # the Measurements recorded after a test body
GATE_STATUS = ("failed", "Q", ("QUANT GATE", {"red": True}))


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    add_ini(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, spec in gates.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {spec.help}")
    config.addinivalue_line("markers", "quant_gpu: the test needs --quant-gpu (it skips without it)")
    workers.apply_on_worker(config)  # an xdist worker's own GPU(s), before anything starts CUDA
    startup.check_space_form(config)  # before the options: the ini file they would be read from may be the wrong one
    options = QuantOptions.from_config(config)
    startup.check_start(config, options)
    if options.gpu:
        from .hardware import cuda_problem

        problem = cuda_problem(options.device)
        if problem:
            raise pytest.UsageError(problem)
    registry = Registry(BUILTIN_BACKENDS)
    try:
        for added in config.hook.pytest_quant_backends(config=config):
            for backend in added or ():
                registry.add(backend)
        recipes, notes = available_recipes(config.rootpath / "pyproject.toml", registry, options)
    except (RecipeError, TypeError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    for note in notes:
        config.issue_config_time_warning(pytest.PytestConfigWarning(note), stacklevel=2)
    try:
        config.stash[SESSION_KEY] = QuantSession(options, recipes, registry, progress=_progress(config))
    except ValueError as exc:  # a model folder that changed since its option was parsed (an unreadable config.json)
        raise pytest.UsageError(str(exc)) from None
    assigned = workers.assign_on_controller(config, options.gpu, options.device_given, options.sharded,
                                            tuple(p.id for p in config.stash[SESSION_KEY].pairs))
    if assigned:
        config.stash[SESSION_KEY].progress(assigned)
    config.pluginmanager.register(SummaryPlugin(config, options), "quant-summary")
    # vs="baseline" markers compare with <baseline dir>/<model>/<hardware>/<test id>.json
    config.pluginmanager.register(
        BaselinePlugin(config, options.baseline_dir, options.device, options.eval_text, [r.name for r in recipes],
                       sharded=options.sharded),
        "quant-baselines")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` with --quant-gpu: one worker per visible GPU (None: xdist's own count, one per CPU)."""
    try:
        options_gpu = bool(value_or_ini(config, "--quant-gpu"))
        shard = value_or_ini(config, "--quant-device") == "auto"
        return workers.auto_workers(options_gpu, shard)
    except Exception:  # a bad option or no torch: pytest_configure reports it with its own message
        return None


def _progress(config: pytest.Config):
    """A line in pytest's terminal for the long steps; quiet under -q and on xdist workers."""

    def write(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or config.get_verbosity() < 0:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            reporter.write_line(f"pytest-quant: {message}")
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"pytest-quant: {message}")

    return write


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "quant_pair" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION_KEY]
    metafunc.parametrize("quant_pair", session.pairs, ids=[p.id for p in session.pairs], indirect=True, scope="session")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Parse every test's markers once, and decide what each reference must have measured."""
    quant = config.stash[SESSION_KEY]
    needs: set[str] = set()
    for item in items:
        needs |= gates.gates_of(item).reference_needs
        if "quant_reference" in getattr(item, "fixturenames", ()):
            needs |= set(NEEDS)  # the fixture shows every figure, whatever the order of the tests
    if quant.options.report is not None:
        needs |= set(NEEDS)  # a report shows every figure of every recipe
    quant.references.plan(frozenset(needs))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    quant = item.config.stash[SESSION_KEY]
    if item.get_closest_marker("quant_gpu") and not quant.options.gpu:
        pytest.skip("needs --quant-gpu")
    parsed = gates.gates_of(item)
    if parsed.error:
        pytest.fail(parsed.error, pytrace=False)
    if parsed.limits and "quant_model" not in getattr(item, "fixturenames", ()):
        pytest.fail(f"@pytest.mark.{parsed.limits[0].marker} gates a quantized model: add the quant_model fixture "
                    f"to {item.name}", pytrace=False)
    for limit in parsed.limits:
        for note in limit.notes:
            item.warn(pytest.PytestWarning(note))


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
    """The unquantized reference of the current model: its measurements (measured once per session)."""
    quant: QuantSession = request.config.stash[SESSION_KEY]
    if quant.reference_pair(quant_pair.model) is None:
        pytest.fail(f"quant_reference: {quant_pair.model.name} is a pre-quantized checkpoint and has no unquantized "
                    "reference; gate it with absolute limits or vs='baseline'", pytrace=False)
    return quant.references.ensure(quant_pair.model)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After the test body (passed or not), measure what the test's markers need and record it."""
    qm: QuantModel | None = getattr(item, "funcargs", {}).get("quant_model")
    if qm is None:
        return (yield)
    try:
        result = yield
    except BaseException:
        _record(item, qm, body_failed=True)
        raise
    _record(item, qm, body_failed=False)
    return result


def _record(item: pytest.Item, qm: QuantModel, body_failed: bool) -> None:
    quant: QuantSession = item.config.stash[SESSION_KEY]
    needs = gates.gates_of(item).needs
    if quant.options.report is not None:
        needs |= frozenset(NEEDS)
    try:
        measured = quant.measure(qm, needs) if needs and qm.model is not None else qm.measurements
    except Exception:
        if not body_failed:
            raise  # the measurement failed: that is this test's failure
        measured = qm.measurements  # the body's own failure is the one to report; keep what was measured
    item.stash[MEASURED_KEY] = measured
    item.user_properties.extend(properties(measured))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Check the gates after the body, and report a violated one under its own status, not as an assert."""
    report: pytest.TestReport = yield
    measured = item.stash.get(MEASURED_KEY, None)
    if call.when != "call" or measured is None:
        return report
    parsed = gates.gates_of(item)
    violations = [v for limit in parsed.limits for v in gates.check(limit, measured)]
    sections: list[tuple[str, str]] = []
    if parsed.baseline:
        from .baselines.gate import IMPROVED_PROPERTY, check

        try:
            baseline = check(item, parsed.baseline, measured)
        except Exception as exc:  # a broken baseline must fail this test, not the session
            violations.append(gates.Violation(parsed.baseline[0].marker, f"baseline check failed: "
                                              f"{type(exc).__name__}: {exc}", float("nan"), float("nan"), ""))
        else:
            violations += baseline.violations
            if baseline.improved:
                report.user_properties.append((IMPROVED_PROPERTY, baseline.improved))
            if baseline.detail:
                sections.append(("quant baseline", baseline.detail))
    if not violations:
        return report
    reasons = "\n".join(v.reason for v in violations)
    quality = getattr(measured, "quality", None)
    few = quality and few_tokens_note(quality.tokens_scored, item.config.stash[SESSION_KEY].options.eval_tokens,
                                      item.config.stash[SESSION_KEY].options.eval_text)
    if few:
        reasons += "\n" + few.removeprefix("pytest-quant: ")
    report.sections.append(("Captured quant metrics call", detail(measured)))
    report.sections.extend((f"Captured {title} call", text) for title, text in sections)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = reasons
        report.quant_gate = reasons
    else:
        report.sections.append(("Captured quant gate violations call", reasons))
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    if report.when == "call" and getattr(report, "quant_gate", None) and report.failed:
        return GATE_STATUS
    return None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    violated = [r for r in terminalreporter.stats.get("failed", []) if getattr(r, "quant_gate", None)]
    if violated and config.get_verbosity() > -2:
        terminalreporter.write_sep("=", "pytest-quant gate violations", red=True)
        for report in violated:
            terminalreporter.write_line(f"{report.nodeid}")
            for line in str(report.quant_gate).splitlines():
                terminalreporter.write_line(f"    {line}")
