"""Baselines: a syrupy JSON extension that compares with per-metric, direction-aware tolerances.

Each test that gates with ``vs="baseline"`` keeps one reviewable JSON file,
``<baseline dir>/<model>/<hardware key>/<test id>.json``. syrupy does the bookkeeping (``--snapshot-update``,
created / updated / failed counts, unused snapshots); this module decides what a match is, what a file
looks like, where it lives, and which files a session may call unused: only the current hardware's,
for the models and recipes of this session, so another machine's or another recipe's files are never
reported or deleted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pytest
from syrupy.data import SnapshotCollections
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

from . import __version__
from .gates import Limits, MarkerError, Metrics, Violation
from .hardware import cpu_name, hardware_key
from .options import format_bytes

FORMAT_VERSION = 1
TOLERANCE_INI = "quant_baseline_tolerances"
DEVICE_KINDS = ("cpu", "cuda")


# -- what is compared ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str  # the key in the file, unit in the name
    marker: str  # the marker whose vs="baseline" compares it
    higher_is_better: bool
    relative: bool  # tolerance is a fraction of the baseline; otherwise in the metric's own unit
    decimals: int  # fixed precision in the file
    label: str
    show: Callable[[float], str]
    tolerance_unit: str  # how an absolute tolerance reads in a message
    defaults: dict[str, float]  # default tolerance per device kind
    read: Callable[[Metrics], float | None]

    def show_tolerance(self, tolerance: float) -> str:
        return f"{100 * tolerance:g}%" if self.relative else f"{tolerance:g}{self.tolerance_unit}"


def _decode(m: Metrics) -> float | None:
    return None if m.throughput is None else m.throughput.decode_tokens_per_s


def _vram(m: Metrics) -> float | None:
    return None if m.vram is None else m.vram.peak_bytes


def _quality(name: str) -> Callable[[Metrics], float | None]:
    return lambda m: None if m.quality is None else getattr(m.quality, name)


METRICS: tuple[Metric, ...] = (
    # GPU decode is steady once warmed up and synchronised: 10% separates a real regression from
    # clock and scheduling jitter. CPU runners are shared 2-core machines: the repeats of one session
    # vary by 10-50% (coefficient of variation), and between sessions the median moves far more with
    # the neighbours' load. Eight back-to-back sessions on one such machine (load average 4-7) measured
    # the embedded model's reference decode at 3.6 to 269 tok/s and bnb-nf4 at 6.8 to 79 tok/s; every
    # CPU also shares the key "cpu". So on CPU the gate is only a tripwire for a tenfold slowdown, such
    # as a kernel falling back to a slow path: it fails below 10% of the baseline. A dedicated runner
    # can tighten it in the ini ("cpu: decode_tokens_per_s = 0.3").
    Metric("decode_tokens_per_s", "tokens_per_second", True, True, 1, "decode", lambda v: f"{v:.1f} tok/s", "",
           {"cuda": 0.10, "cpu": 0.90}, _decode),
    # The allocator peak moves a little with cuBLAS workspaces and library versions; the CPU figure is
    # the model footprint, which only moves when the quantized layout does.
    Metric("vram_peak_bytes", "vram_budget", False, True, 0, "VRAM peak", format_bytes, "",
           {"cuda": 0.05, "cpu": 0.02}, _vram),
    # Quality is deterministic on one machine; across machines and library versions reduction order
    # moves perplexity by about 1e-4 relative. These absolute margins sit well above that noise and
    # well below what a changed quantization recipe does.
    Metric("perplexity", "perplexity_delta", False, False, 4, "perplexity", lambda v: f"{v:.4f}", "",
           {"cuda": 0.05, "cpu": 0.05}, _quality("perplexity")),
    Metric("mean_kl_nats", "kl_divergence", False, False, 6, "mean KL", lambda v: f"{v:.6f} nats", " nats",
           {"cuda": 0.001, "cpu": 0.001}, _quality("mean_kl_nats")),
    Metric("p99_kl_nats", "kl_divergence", False, False, 6, "99th percentile KL", lambda v: f"{v:.6f} nats", " nats",
           {"cuda": 0.01, "cpu": 0.01}, _quality("p99_kl_nats")),
    Metric("top1_agreement_percent", "kl_divergence", True, False, 3, "top-1 agreement", lambda v: f"{v:.2f}%",
           " points", {"cuda": 0.5, "cpu": 0.5}, _quality("top1_agreement_percent")),
)
METRIC = {m.key: m for m in METRICS}
QUALITY_KEYS = frozenset({"perplexity", "mean_kl_nats", "p99_kl_nats", "top1_agreement_percent"})
CONTEXT_DECIMALS = {"decode_cv_percent": 2}


def marker_metrics(marker: str) -> tuple[Metric, ...]:
    """The metrics a marker's vs="baseline" compares; the first is what a bare ``tolerance=`` sets."""
    return tuple(m for m in METRICS if m.marker == marker)


def _tolerance_value(metric: Metric, value: Any) -> float:
    """A tolerance for ``metric``, or ValueError saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance for {metric.key} must be a finite number >= 0, got {value!r}")
    if metric.relative and metric.higher_is_better and value >= 1:
        raise ValueError(f"tolerance for {metric.key} is a fraction of the baseline and must be below 1, got {value!r}")
    return float(value)


def parse_tolerance(marker: str, value: Any) -> dict[str, float]:
    """A marker's ``tolerance=``: a number for its first metric, or a dict of metric -> number."""
    metrics = marker_metrics(marker)
    given = value if isinstance(value, dict) else {metrics[0].key: value}
    out = {}
    for key, tolerance in given.items():
        if key not in {m.key for m in metrics}:
            raise MarkerError(f"@pytest.mark.{marker}(tolerance={value!r}): unknown metric {key!r}; "
                              f"this marker compares {', '.join(m.key for m in metrics)}")
        try:
            out[key] = _tolerance_value(METRIC[key], tolerance)
        except ValueError as exc:
            raise MarkerError(f"@pytest.mark.{marker}(tolerance={value!r}): {exc}") from None
    return out


def parse_tolerance_ini(lines: list[str]) -> dict[tuple[str | None, str], float]:
    """``quant_baseline_tolerances`` lines, ``[cpu:|cuda:]metric = number`` -> {(device kind, metric): tolerance}."""
    out: dict[tuple[str | None, str], float] = {}
    for line in lines:
        match = re.fullmatch(r"\s*(?:(\w+):)?\s*(\w+)\s*=\s*(\S+)\s*", line)
        kind, key, raw = match.groups() if match else (None, None, None)
        problem = None
        if match is None:
            problem = "expected '[cpu:|cuda:]metric = number'"
        elif kind is not None and kind not in DEVICE_KINDS:
            problem = f"unknown device kind {kind!r}; use cpu: or cuda:"
        elif key not in METRIC:
            problem = f"unknown metric {key!r}; known: {', '.join(METRIC)}"
        else:
            try:
                out[(kind, key)] = _tolerance_value(METRIC[key], float(raw))
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise pytest.UsageError(f"ini {TOLERANCE_INI} line {line!r}: {problem}")
    return out


# -- where files live ---------------------------------------------------------------------------
def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        match = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        return match.group(1) if match else None
    except OSError:
        return None


def environment(device: str) -> dict[str, Any]:
    """The hardware and versions a baseline was measured with: recorded in the file, never compared."""
    import torch

    hardware: dict[str, Any] = {"key": hardware_key(device)}
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        props = torch.cuda.get_device_properties(index)
        hardware.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                        memory_bytes=int(props.total_memory), cuda=torch.version.cuda, driver=_nvidia_driver())
    else:
        hardware.update(name=cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    versions = {"python": platform.python_version(), "pytest-quant": __version__}
    for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "gptqmodel", "optimum"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"hardware": {k: v for k, v in hardware.items() if v is not None}, "versions": versions}


SETTINGS_KEY = pytest.StashKey["BaselineSettings"]()


@dataclass
class BaselineSettings:
    """One session's baseline configuration, stashed on the config for the extension to find."""

    root: Path
    device: str
    rootpath: Path
    eval_text: Path
    recipes: frozenset[str]
    ini_tolerances: dict[tuple[str | None, str], float] = field(default_factory=dict)
    # (model, file stem) -> node ids of the collected tests that own that file
    owners: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _hardware: str | None = None
    _environment: dict[str, Any] | None = None
    _eval_sha256: str | None = None

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    @property
    def hardware(self) -> str:
        if self._hardware is None:
            self._hardware = hardware_key(self.device)
        return self._hardware

    @property
    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            self._environment = environment(self.device)
        return self._environment

    @property
    def eval_sha256(self) -> str:
        if self._eval_sha256 is None:
            self._eval_sha256 = hashlib.sha256(self.eval_text.read_bytes()).hexdigest()
        return self._eval_sha256

    def tolerance(self, key: str) -> float:
        for kind in (self.device_kind, None):
            if (kind, key) in self.ini_tolerances:
                return self.ini_tolerances[(kind, key)]
        return METRIC[key].defaults[self.device_kind]

    def show(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.relative_to(self.rootpath))
        except ValueError:
            return str(path)


def _model_name(item: Any) -> str | None:
    callspec = getattr(item, "callspec", None)
    pair = callspec.params.get("quant_pair") if callspec is not None else None
    return getattr(getattr(pair, "model", None), "name", None)


# -- the file -----------------------------------------------------------------------------------
class BaselineFormatError(ValueError):
    """A baseline file that cannot be compared with; the message says what is wrong."""


def dumps(record: dict[str, Any]) -> str:
    """Review-friendly JSON: sorted keys, two-space indent, fixed decimals per metric."""

    def dump(value: Any, key: str | None, depth: int) -> str:
        if isinstance(value, dict):
            if not value:
                return "{}"
            pad = "  " * (depth + 1)
            inner = ",\n".join(f"{pad}{json.dumps(k)}: {dump(v, k, depth + 1)}" for k, v in sorted(value.items()))
            return "{\n" + inner + "\n" + "  " * depth + "}"
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{key} is {value}: a baseline holds finite numbers only")
            decimals = METRIC[key].decimals if key in METRIC else CONTEXT_DECIMALS.get(key)
            if decimals == 0:
                return str(int(round(value)))
            return f"{value:.{decimals}f}" if decimals is not None else json.dumps(value)
        if isinstance(value, (list, tuple)):
            return json.dumps(list(value), ensure_ascii=False)
        return json.dumps(value, ensure_ascii=False)

    return dump(record, None, 0) + "\n"


def loads(text: str) -> dict[str, Any]:
    """Parse a baseline and check its shape, or raise BaselineFormatError saying what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineFormatError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BaselineFormatError(f"expected a JSON object at the top level, found {type(data).__name__}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BaselineFormatError(f"format_version is {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    metrics, context = data.get("metrics"), data.get("context")
    if not isinstance(metrics, dict):
        raise BaselineFormatError(f"'metrics' must be an object of metric -> number, found {metrics!r}")
    if not isinstance(context, dict):
        raise BaselineFormatError(f"'context' must be an object, found {context!r}")
    for key, value in metrics.items():
        if key not in METRIC:
            raise BaselineFormatError(f"unknown metric {key!r} in 'metrics'; known: {', '.join(METRIC)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BaselineFormatError(f"metrics.{key} is {value!r}, expected a finite number >= 0")
    return data


def record(metrics: Metrics, keys: list[str], settings: BaselineSettings) -> dict[str, Any]:
    """What a baseline stores for ``keys``: the measured values and the context needed to read them."""
    context: dict[str, Any] = {"model": metrics.model, "recipe": metrics.recipe, "device": metrics.device,
                               **settings.environment}
    if QUALITY_KEYS & set(keys):
        q = metrics.quality
        context["eval"] = {"text": settings.eval_text.name, "text_sha256": settings.eval_sha256,
                           "tokens": q.tokens_scored, "context_tokens": q.context_tokens}
    if "decode_tokens_per_s" in keys:
        t = metrics.throughput
        context["throughput"] = {"prompt_tokens": t.prompt_tokens, "decode_tokens": t.decode_tokens,
                                 "repeats": t.repeats, "warmup_runs": t.warmup_runs,
                                 "decode_cv_percent": float(t.decode_cv_percent)}
    if "vram_peak_bytes" in keys:
        context["vram"] = {"source": metrics.vram.source}
    values = {key: METRIC[key].read(metrics) for key in keys}
    return {"format_version": FORMAT_VERSION, "context": context,
            "metrics": {k: (int(v) if METRIC[k].decimals == 0 else float(v)) for k, v in values.items()}}


# -- the comparison -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    metric: Metric
    measured: float
    baseline: float
    tolerance: float

    def _bound(self, sign: int) -> float:
        """sign -1: the worst value still accepted; +1: the best value not yet 'improved'."""
        m, b, t = self.metric, self.baseline, self.tolerance
        toward_better = sign if m.higher_is_better else -sign
        return b * (1 + toward_better * t) if m.relative else b + toward_better * t

    @property
    def worst_accepted(self) -> float:
        return self._bound(-1)

    @property
    def improved_beyond(self) -> float:
        return self._bound(+1)

    @property
    def regressed(self) -> bool:
        return self.measured < self.worst_accepted if self.metric.higher_is_better else self.measured > self.worst_accepted

    @property
    def improved(self) -> bool:
        if self.metric.higher_is_better:
            return self.measured > self.improved_beyond
        return self.measured < self.improved_beyond

    def sentence(self, where: str, path: str) -> str:
        m = self.metric
        if self.regressed:
            word, sign, bound = ("below", "-", self.worst_accepted) if m.higher_is_better else ("above", "+", self.worst_accepted)
        else:
            word, sign, bound = "improved beyond", ("+" if m.higher_is_better else "-"), self.improved_beyond
        return (f"{m.label} {m.show(self.measured)} {word} baseline {m.show(self.baseline)} {sign} "
                f"{m.show_tolerance(self.tolerance)} = {m.show(bound)} {where} ({path})")


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reshaped: bool = False  # the file would be written differently (metrics added or dropped)
    stored: dict[str, Any] | None = None

    def matches(self, update: bool) -> bool:
        if self.problems or any(c.regressed for c in self.comparisons):
            return False
        return not (update and (self.reshaped or any(c.improved for c in self.comparisons)))


def compare(received: dict[str, Any], stored_text: str, tolerances: dict[str, float]) -> Outcome:
    """Compare a received record with a stored baseline's text for the metrics in ``tolerances``."""
    try:
        stored = loads(stored_text)
    except BaselineFormatError as exc:
        return Outcome(problems=[str(exc)])
    outcome = Outcome(stored=stored, reshaped=set(stored["metrics"]) != set(received["metrics"]))
    if QUALITY_KEYS & set(tolerances):
        then, now = stored["context"].get("eval"), received["context"].get("eval")
        if then != now:
            outcome.problems.append(f"measured on {_describe_eval(then)}, this run on {_describe_eval(now)}: quality "
                                    "metrics are not comparable; use the baseline's --quant-eval-tokens and "
                                    "--quant-eval-text, or refresh it with --snapshot-update")
    for key, tolerance in tolerances.items():
        if key not in stored["metrics"]:
            outcome.problems.append(f"has no {key}: refresh with --snapshot-update")
            continue
        outcome.comparisons.append(Comparison(METRIC[key], received["metrics"][key], stored["metrics"][key], tolerance))
    return outcome


def _describe_eval(ev: Any) -> str:
    if not isinstance(ev, dict):
        return "an unrecorded eval text"
    sha = str(ev.get("text_sha256", "?"))[:12]
    return f"{ev.get('tokens', '?')} tokens of {ev.get('text', '?')} (sha256 {sha}...)"


# -- the syrupy extension -----------------------------------------------------------------------
class BaselineExtension(JSONSnapshotExtension):
    """syrupy's single-file JSON extension with tolerances, one file per test and hardware.

    ``tolerances`` (metric -> tolerance) and ``update`` are set on the instance by :func:`check` before
    comparing; used on its own it compares every metric of the received record with the defaults
    for the record's device. ``outcome`` holds the last comparison for messages.
    """

    tolerances: dict[str, float] | None = None
    update: bool = False
    outcome: Outcome | None = None

    # where
    @classmethod
    def site(cls, test_location: PyTestLocation) -> Path | None:
        """``<baseline dir>/<model>/<hardware key>`` for a test of a model x recipe, else None."""
        config = getattr(test_location.item, "config", None)
        settings = config.stash.get(SETTINGS_KEY, None) if config is not None else None
        model = _model_name(test_location.item)
        if settings is None or model is None:
            return None
        return settings.root / model / settings.hardware

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        site = cls.site(test_location)
        if site is None:
            raise BaselineFormatError(f"{test_location.nodeid}: baselines are kept per model: the test needs the "
                                      "quant_model fixture and pytest-quant's plugin")
        return str(site)

    @classmethod
    def discovery_dirname(cls, *, test_location: PyTestLocation) -> str:
        site = cls.site(test_location)
        return str(site) if site is not None else ""

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        site, path = cls.site(test_location), Path(snapshot_location)
        return site is not None and path.parent == site and path.stem == cls.get_snapshot_name(test_location=test_location)

    def discover_snapshots(self, *, test_location: PyTestLocation, ignore_extensions: list[str] | None = None) -> SnapshotCollections:
        """The current hardware's files of this model that no collected test owns, for this session's recipes.

        A file owned by a collected test is never unused (its test ran, was skipped, deselected or
        failed before comparing); other hardware's folders and other recipes' files are never looked at.
        """
        discovered = SnapshotCollections()
        site = self.site(test_location)
        if site is None or not site.is_dir():
            return discovered
        settings: BaselineSettings = test_location.item.config.stash[SETTINGS_KEY]
        for path in sorted(site.glob(f"*.{self.file_extension}")):
            if path.name.startswith(".") or not path.is_file():
                continue
            if (site.parent.name, path.stem) in settings.owners or not _recipe_in(path, settings.recipes):
                continue
            discovered.add(self.read_snapshot_collection(snapshot_location=str(path)))
        return discovered

    # what
    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> str:
        return dumps(data)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        received = json.loads(serialized_data)
        tolerances = self.tolerances
        if tolerances is None:
            kind = "cuda" if str(received["context"].get("device", "")).startswith("cuda") else "cpu"
            tolerances = {key: METRIC[key].defaults[kind] for key in received["metrics"]}
        self.outcome = compare(received, snapshot_data, tolerances)
        return self.outcome.matches(self.update)

    # how
    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
        """Write atomically: a temporary file beside the target, then a rename, so a reader (or another
        pytest-xdist worker) sees the old file or the new one, never a torn one."""
        target = Path(snapshot_collection.location)
        data = next(iter(snapshot_collection)).data
        if not isinstance(data, str):
            raise TypeError(f"a baseline is text, got {type(data).__name__}")
        atomic_write(target, data)


def atomic_write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _recipe_in(path: Path, recipes: frozenset[str]) -> bool:
    """Whether a file belongs to one of this session's recipes (an unreadable file does: it is ours to report)."""
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))["context"]["recipe"]
    except Exception:
        return True
    return not isinstance(recipe, str) or recipe in recipes


# -- the gate -----------------------------------------------------------------------------------
IMPROVED_PROPERTY = "quant.baseline_improved"


def baseline_limits(limits: list[Limits]) -> list[Limits]:
    return [limit for limit in limits if getattr(limit, "vs", None) == "baseline"]


def check(item: pytest.Item, limits: list[Limits], metrics: Metrics) -> list[Violation]:
    """Compare the test's measurements with its stored baseline through syrupy's ``snapshot`` fixture.

    Returns one Violation per regressed metric or unusable baseline; a metric improved beyond its
    tolerance passes and is recorded for the summary, so the baseline can be refreshed.
    """
    gated = baseline_limits(limits)
    if not gated:
        return []
    settings: BaselineSettings = item.config.stash[SETTINGS_KEY]
    tolerances: dict[str, float] = {}
    for limit in gated:
        for metric in marker_metrics(limit.marker):
            tolerances[metric.key] = (limit.tolerance or {}).get(metric.key, settings.tolerance(metric.key))
    marker = {key: METRIC[key].marker for key in tolerances}
    unmeasured = [key for key in tolerances if METRIC[key].read(metrics) is None]
    not_finite = [key for key in tolerances if key not in unmeasured and not math.isfinite(METRIC[key].read(metrics))]
    if unmeasured or not_finite:
        return [Violation(marker[key], f"{key} {'was not measured' if key in unmeasured else 'is not finite'}: "
                          f"nothing to compare with the baseline {metrics.where}", math.nan, math.nan, "")
                for key in unmeasured + not_finite]

    snapshot = item.funcargs.get("snapshot")
    if snapshot is None:
        return [Violation(gated[0].marker, f"{item.nodeid}: a vs='baseline' marker added after collection cannot be "
                          "compared; add it at collection time (decorator, pytestmark or pytest_collection_modifyitems)",
                          math.nan, math.nan, "")]
    assertion = snapshot.use_extension(BaselineExtension)
    extension = assertion.extension
    extension.tolerances, extension.update = tolerances, bool(assertion.update_snapshots)
    path = extension.get_location(test_location=assertion.test_location, index=assertion.index)
    shown = settings.show(path)
    assertion == record(metrics, list(tolerances), settings)  # noqa: B015 - syrupy records the outcome
    result = assertion.executions[assertion.num_executions - 1]
    first = next(iter(marker.values()))

    if result.created or result.updated:
        return []
    if result.exception is not None:
        return [Violation(first, f"baseline {shown}: {type(result.exception).__name__}: {result.exception}",
                          math.nan, math.nan, "")]
    if result.recalled_data is None:
        return [Violation(first, f"no baseline for {metrics.model}/{settings.hardware}: run with --snapshot-update "
                          f"({shown})", math.nan, math.nan, "")]
    outcome = extension.outcome
    violations = [Violation(first, f"baseline {shown} {problem}" if problem.startswith("has no")
                            else f"baseline {shown}: {problem}", math.nan, math.nan, "") for problem in outcome.problems]
    for c in outcome.comparisons:
        if c.regressed:
            violations.append(Violation(c.metric.marker, c.sentence(metrics.where, shown), c.measured, c.worst_accepted,
                                        c.metric.key))
    improved = [c.sentence(metrics.where, shown) for c in outcome.comparisons if c.improved]
    if improved:
        item.user_properties.append((IMPROVED_PROPERTY, improved))
    if violations:
        item.add_report_section("call", "quant baseline", _detail(outcome, shown, settings))
    return violations


def _detail(outcome: Outcome, shown: str, settings: BaselineSettings) -> str:
    lines = [f"baseline: {shown} (hardware key {settings.hardware})"]
    for c in outcome.comparisons:
        state = "regressed" if c.regressed else "improved beyond tolerance" if c.improved else "within tolerance"
        lines.append(f"{c.metric.key}: measured {c.metric.show(c.measured)}, baseline {c.metric.show(c.baseline)}, "
                     f"tolerance {c.metric.show_tolerance(c.tolerance)}: {state}")
    if outcome.stored is not None:
        then = outcome.stored["context"].get("versions", {})
        now = settings.environment["versions"]
        changed = [f"{k} {then.get(k, '-')} -> {now.get(k, '-')}" for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        if changed:
            lines.append("versions since the baseline: " + ", ".join(changed))
    return "\n".join(lines)


# -- pytest glue (registered by the plugin) -----------------------------------------------------
def add_ini(parser: pytest.Parser) -> None:
    parser.addini(TOLERANCE_INI, "baseline tolerances, one '[cpu:|cuda:]metric = number' per line; metrics: "
                  + ", ".join(f"{m.key} (default cpu {m.defaults['cpu']:g}, cuda {m.defaults['cuda']:g})" for m in METRICS),
                  type="linelist", default=[])


class BaselinePlugin:
    """Collection-time bookkeeping of which tests own which baseline files, setup checks, and the
    terminal summary's list of baselines that improved beyond their tolerance."""

    def __init__(self, config: pytest.Config, baseline_dir: Path, device: str, eval_text: Path, recipes: list[str]):
        root = baseline_dir if baseline_dir.is_absolute() else config.invocation_params.dir / baseline_dir
        self.config = config
        self.settings = BaselineSettings(root=root, device=device, rootpath=config.rootpath, eval_text=eval_text,
                                         recipes=frozenset(recipes),
                                         ini_tolerances=parse_tolerance_ini(config.getini(TOLERANCE_INI)))
        config.stash[SETTINGS_KEY] = self.settings
        self.errors: dict[str, str] = {}
        self.improved: list[str] = []

    def _gated(self, item: pytest.Item) -> bool:
        from . import gates

        for mark in item.iter_markers():
            if mark.name in gates.MARKERS and mark.kwargs.get("vs") == "baseline":
                return True
        return False

    def _own(self, item: pytest.Item) -> None:
        """Record which baseline file a collected test owns: such a file is never unused."""
        model = _model_name(item)
        if model is not None:
            name = BaselineExtension.get_snapshot_name(test_location=PyTestLocation(item))
            self.settings.owners.setdefault((model, name), []).append(item.nodeid)

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

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.improved and self.config.get_verbosity() > -2:
            terminalreporter.write_sep("=", "pytest-quant baselines")
            terminalreporter.write_line("improved beyond tolerance: refresh with --snapshot-update")
            for line in self.improved:
                terminalreporter.write_line(f"  {line}")
