"""A timed decode's budget: a short probe run's seconds estimate the whole timing, refused before it runs
where it would take longer than ``--quant-timing-budget`` (a kernel that is slow at one token per step)."""

from __future__ import annotations

PROBE_STEPS = 4  # decode steps of the probe run that estimates the timing against a budget


class TimingBudgetExceeded(RuntimeError):
    """The timed decode would take longer than its budget (the estimate and the figures it came from)."""


def check_budget(probe: tuple[float, float], probe_steps: int, decode_tokens: int, runs: int, budget_s: float,
                 mode: str) -> None:
    """Raise ``TimingBudgetExceeded`` where ``runs`` runs of a prefill and ``decode_tokens`` steps, at the
    probe's seconds (``probe``: its prefill and its ``probe_steps`` steps), would take more than ``budget_s``."""
    prefill_s, decode_s = probe
    step_s = decode_s / probe_steps
    estimate = runs * (prefill_s + decode_tokens * step_s)
    if estimate > budget_s:
        raise TimingBudgetExceeded(
            f"timing decode in {mode} mode would take about {estimate:.0f} s ({runs} runs of a {prefill_s:.2f} s "
            f"prefill and {decode_tokens} steps at {step_s:.3f} s a step), over the budget of {budget_s:g} s")
