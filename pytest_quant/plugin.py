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
from .report.properties import PREFIX, RELEASED, detail, properties
from .report.summary import SummaryPlugin
from .models.vision import is_image_text_to_text
from .run.inputs import few_tokens_note
from .run.measurer import NEEDS
from .run.pairs import Pair
from .run.quant_model import QuantModel
from .run.session import QuantSession
from .verdict import GateViolation, Verdict, judge

SESSION_KEY = pytest.StashKey[QuantSession]()
MEASURED_KEY = pytest.StashKey["object"]()  # the Measurements recorded after a test body
VERDICT_KEY = pytest.StashKey[Verdict]()  # the gates' verdict on them
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
        registry.add_from_hook(config.hook.pytest_quant_backends, config=config)  # a collision names both plugins
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
    tasks_for: set[str] = set()  # the references whose own tests or variants' answer the task items
    for item in items:
        needs |= gates.gates_of(item).reference_needs
        if "quant_reference" in getattr(item, "fixturenames", ()):
            needs |= set(NEEDS)  # the fixture shows every figure, whatever the order of the tests
        pair = getattr(getattr(item, "callspec", None), "params", {}).get("quant_pair")
        if isinstance(pair, Pair) and "tasks" in gates.gates_of(item).needs:
            reference = pair if pair.recipe.is_reference else quant.pairing.reference_of(pair.model, pair.recipe)
            tasks_for |= {reference.id} if reference is not None else set()
    # a report shows what the tests measured: writing one adds no measurement ("-" where nothing was asked)
    quant.references.plan(frozenset(needs), tasks_for=frozenset(tasks_for))


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
    reference = quant.pairing.reference_of(quant_pair.model, quant_pair.recipe)
    if reference is None and quant_pair.recipe.is_reference:  # a reference's own (a user recipe of backend reference:
        from .recipes import BUILTIN_RECIPES  # the built-in one's, as before)

        reference = Pair(quant_pair.model, BUILTIN_RECIPES["reference"]) if quant_pair.recipe.backend == "reference" \
            else quant_pair
    if reference is None:
        pytest.fail(f"quant_reference: {quant_pair.model.name} is a pre-quantized checkpoint and has no unquantized "
                    "reference; gate it with absolute limits or vs='baseline'", pytrace=False)
    return quant.references.ensure(reference)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After the test body (passed or not), measure what the test's markers need, record it and judge it: a
    violated gate is raised here, in the call phase, as a failing assert would be (xfail treats it the same)."""
    qm: QuantModel | None = getattr(item, "funcargs", {}).get("quant_model")
    if qm is None:
        return (yield)
    try:
        result = yield
    except Exception:
        measured = _record(item, qm, body_failed=True)
        item.stash[VERDICT_KEY] = _judge(item, measured, body_failed=True)  # reported beside the body's failure
        raise
    except BaseException:  # skip, fail, exit, interrupt: what was measured is kept, nothing is judged
        _record(item, qm, body_failed=True)
        raise
    verdict = _judge(item, _record(item, qm, body_failed=False))
    item.stash[VERDICT_KEY] = verdict
    if verdict.violations:
        raise GateViolation(_reasons(item, verdict))
    return result


def _record(item: pytest.Item, qm: QuantModel, body_failed: bool):
    needs = gates.gates_of(item).needs
    try:
        measured = qm.measure(needs) if needs and qm.model is not None else qm.measurements
    except BaseException:
        measured = qm.measurements  # what was measured before the failure: the pair keeps its summary row
        item.stash[MEASURED_KEY] = measured
        item.user_properties.extend(properties(measured))
        if not body_failed:
            raise  # the measurement failed: that is this test's failure
        return measured  # the body's own failure is the one to report
    item.stash[MEASURED_KEY] = measured
    item.user_properties.extend(properties(measured))
    return measured


def _judge(item: pytest.Item, measured, body_failed: bool = False) -> Verdict:
    verdict = judge(item, measured, body_failed)
    item.user_properties.extend(verdict.properties)
    return verdict


def _reasons(item: pytest.Item, verdict: Verdict) -> str:
    reasons = verdict.reasons
    quality = getattr(item.stash.get(MEASURED_KEY, None), "quality", None)
    options = item.config.stash[SESSION_KEY].options
    pair = getattr(getattr(item, "callspec", None), "params", {}).get("quant_pair")
    images = isinstance(pair, Pair) and is_image_text_to_text(pair.model.path)  # scored its image prompts' answers
    few = quality and not images and few_tokens_note(quality.tokens_scored, options.eval_tokens, options.eval_text)
    return reasons + ("\n" + few.removeprefix("pytest-quant: ") if few else "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A violated gate is reported under its own status with its one-line reasons (not a traceback), and the
    figures beside it; under xfail it is an expected failure like any failing assert."""
    report: pytest.TestReport = yield
    pair = getattr(getattr(item, "callspec", None), "params", {}).get("quant_pair")
    if call.when == "setup" and report.failed and isinstance(pair, Pair) and not report.user_properties:
        # loading failed: what is known of the pair (names, what the backend said) keeps its FAIL row in the summary
        report.user_properties.extend(properties(item.config.stash[SESSION_KEY].ledger.known(pair)))
    if call.when != "call":
        # a model is released when the next pair's setup needs the device (the last one in the session's teardown):
        # its release time reaches the summary with the report of the phase that released it
        released = item.config.stash[SESSION_KEY].ledger.unreported_releases()
        if released:
            report.user_properties.append((PREFIX + RELEASED, released))
    verdict = item.stash.get(VERDICT_KEY, None)
    if call.when != "call" or verdict is None:
        return report
    report.sections.extend((f"Captured {title} call", text) for title, text in verdict.sections)
    if not verdict.violations:
        return report
    report.sections.append(("Captured quant metrics call", detail(item.stash[MEASURED_KEY])))
    gate_raised = call.excinfo is not None and call.excinfo.errisinstance(GateViolation)
    if gate_raised and report.failed:
        report.longrepr = str(call.excinfo.value)
        report.quant_gate = report.longrepr
    elif not gate_raised:
        report.sections.append(("Captured quant gate violations call", verdict.reasons))
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
