"""How the report writes numbers: three significant digits for measurements (a 0.31 µs time must not
print as 0.3), whole numbers for counts, the reference's two decimals for accuracies, and sizes in KiB
(1,024 bytes), the unit the reference's "kB" values match.
"""

import math
from typing import Any

DASH = "–"


def num(v: Any) -> float | None:
    """A float from a CSV cell, None for empty, unparsable or NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def sig(v: float | None, digits: int = 3) -> str:
    """At least `digits` significant digits, never fewer decimals than that needs (0.312, 3.30, 33.0,
    330, 3,300): numbers at or over 10**digits keep every integer digit instead of rounding to zeros."""
    if v is None:
        return DASH
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - magnitude)
    text = f"{v:,.{decimals}f}"
    if decimals and len(text.replace(",", "").replace("-", "").replace(".", "").lstrip("0")) > digits:
        text = f"{v:,.{decimals - 1}f}"  # 9.996 rounds up to 10.00: one digit too many
    return text


def fixed(v: float | None, decimals: int = 2) -> str:
    return DASH if v is None else f"{v:,.{decimals}f}"


def count(v: float | None) -> str:
    return DASH if v is None else f"{round(v):,}"


def kib(size_bytes: float | None) -> float | None:
    return None if size_bytes is None else size_bytes / 1024


def cell(ours: float | str | None, theirs: Any, digits: int | None = 2) -> str:
    """`ours (theirs)`, only ours where the reference has no number. `digits`: fixed decimals, or None
    for three significant digits. `ours` may be preformatted text (e.g. a seeds' `mean ± std`)."""
    def show(v: float | None) -> str:
        return sig(v) if digits is None else fixed(v, digits)

    text = ours if isinstance(ours, str) else show(ours)
    return text if theirs is None else f"{text} ({as_printed(theirs, show)})"


def as_printed(theirs: Any, show: Any) -> str:
    """A reference number as the paper prints it: an integer without decimals (98, not 98.00), a transcribed
    decimal with its own (156.15); a derived one (seconds x 1e6, a ratio) through `show`."""
    if isinstance(theirs, int):
        return f"{theirs:,}"
    text = repr(float(theirs))
    if "e" not in text and len(text.split(".")[1]) <= 2 and text.split(".")[1] != "0":
        return f"{float(theirs):,.{len(text.split('.')[1])}f}"
    return str(show(float(theirs)))
