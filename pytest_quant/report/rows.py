"""One row per model x recipe, merged from the test reports that carry its properties, and the terminal table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .columns import cells
from .properties import PREFIX, RELEASED

# A row's result is the worst of its tests'.
SEVERITY = {"pass": 0, "xfail": 1, "interrupted": 2, "FAIL": 3}


@dataclass
class Rows:
    """One row per model x recipe, merged from every test report that carried its properties."""

    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, report) -> None:
        props = {k.removeprefix(PREFIX): v for k, v in getattr(report, "user_properties", ()) if k.startswith(PREFIX)}
        for pair, seconds in (props.pop(RELEASED, None) or {}).items():
            if pair in self.pairs:
                self.pairs[pair]["release_s"] = seconds
        if "pair" not in props:
            return
        row = self.pairs.setdefault(props["pair"], {"result": "pass"})
        result = row["result"]
        row.update(props)
        row["result"] = result
        if report.failed:
            self.worsen(props["pair"], "FAIL")
        elif report.skipped and hasattr(report, "wasxfail"):
            self.worsen(props["pair"], "xfail")  # an expected failure: a known-bad recipe

    def worsen(self, pair: str, result: str) -> None:
        row = self.pairs.get(pair)
        if row is not None and SEVERITY[result] > SEVERITY[row["result"]]:
            row["result"] = result

    def mark_interrupted(self) -> None:
        """An interrupted session: rows that passed so far are not known to be complete."""
        for pair in self.pairs:
            self.worsen(pair, "interrupted")



def table(rows: Rows) -> list[str]:
    header, body, columns = cells(rows.pairs, terminal=True)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if col.text and col.key != "result" else c.rjust(w)
                         for c, w, col in zip(r, widths, columns))

    return [line(header), "  ".join("-" * w for w in widths), *map(line, body)]
