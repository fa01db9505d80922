"""The paper's numbers (paper_numbers.yaml): one PaperTable per table of the paper."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


PAPER_NUMBERS_PATH = Path(__file__).with_name("paper_numbers.yaml")


# ---------------------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: `baseline` and `cmr` values per row, in the paper's unit."""

    table: str
    eval: str
    what: str
    key: str
    unit: str
    rows: tuple
    baseline: tuple
    cmr: tuple

    def lookup(self, row: Any) -> tuple[float, float]:
        """(baseline, cmr) for a row key (int-like match), NaN where the paper has no such row."""
        try:
            r = int(float(row))
        except (TypeError, ValueError):
            return math.nan, math.nan
        if r in self.rows:
            i = self.rows.index(r)
            return float(self.baseline[i]), float(self.cmr[i])
        return math.nan, math.nan

    @property
    def to_fraction(self) -> float:
        """Factor that turns the paper's unit into ours (accuracy fraction; ms stays ms)."""
        return {"percent": 0.01, "score_out_of_10": 0.1}.get(self.unit, 1.0)


def load_paper_numbers(path: str | Path = PAPER_NUMBERS_PATH) -> dict[str, Any]:
    """{'source': str, 'tables': {eval_id: PaperTable}}; raises DataError if the file is malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"paper numbers file missing: {path}")
    raw = yaml.safe_load(path.read_text())
    try:
        tables = {}
        for name, t in raw["tables"].items():
            rows, base, cmr = tuple(t["rows"]), tuple(t["baseline"]), tuple(t["cmr"])
            if not len(rows) == len(base) == len(cmr):
                raise DataError(f"{path}: table {name} has rows/baseline/cmr of different lengths")
            tables[t["eval"]] = PaperTable(str(name), t["eval"], t["what"], t["key"], t["unit"], rows, base, cmr)
        return {"source": raw["source"], "baseline_note": raw.get("baseline_note", ""), "tables": tables}
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: malformed paper numbers ({e!r})") from e
