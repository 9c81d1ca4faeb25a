"""Several seeds of one variant: a cell shows their mean ± sample standard deviation, and the summary
table has one line per (dataset, model, pipeline) with every seed's number folded in.

A variant run under several seeds shares its recipe label and differs only in `seed` (plan.py gives
each its own `--seedN` variant id), so grouping by (dataset, base model, label) gathers the seeds.
"""

import statistics
from collections.abc import Callable, Iterable

from deepshrink.report.numbers import num

Row = dict[str, str]



def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, count) over the values that exist."""
    got = [v for v in values if v is not None]
    if not got:
        return None, None, 0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else None), len(got)


def pm(values: Iterable[float | None], digits: int = 2) -> str:
    """`98.41 ± 0.05` over several seeds, `98.41` for one, `–` for none."""
    mean, std, _ = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:,.{digits}f}" if std is None else f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def group_key(r: Row) -> tuple[str, str, str]:
    return r.get("dataset", ""), r.get("base_model") or r.get("model", ""), r.get("label", "")


def groups(rows: list[Row], key: Callable[[Row], tuple[str, ...]] = group_key) -> dict[tuple[str, ...], list[Row]]:
    """Finished rows by `key` (default: dataset, base model, label), seeds in order."""
    out: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        if r.get("status") == "ok":
            out.setdefault(key(r), []).append(r)
    for seeds in out.values():
        seeds.sort(key=lambda r: num(r.get("seed")) or 0.0)
    return out


def column(rows: list[Row], key: str, scale: float = 1.0) -> list[float | None]:
    return [None if (v := num(r.get(key))) is None else v * scale for r in rows]


def per_seed(rows: list[Row], key: str, fmt: Callable[[float], str]) -> str:
    """Each seed's number, for the reader who wants more than mean ± std: `s0 98.4, s1 98.5`."""
    vals = [(r.get("seed", "?"), num(r.get(key))) for r in rows]
    return ", ".join(f"s{s} {fmt(v)}" for s, v in vals if v is not None) if len(rows) > 1 else ""
