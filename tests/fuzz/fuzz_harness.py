"""The fuzzing engine: hypothesis draws a seed and a short list of mutations (bit flips, interesting bytes
and integers, insertions, deletions, duplications, truncation, splices with another seed, and numbers in
text headers — JSON, TOML, Python — replaced by extreme ones), applies them, and calls the reader.

Each reader's outcome per input: accepted, refused (`UserError`), crash (any other exception) or hang
(over `HANG_SECONDS`, interrupted by SIGALRM). Crashing inputs are kept for reproduction.
"""

import re
import signal
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from deepshrink.errors import UserError

from fuzz_targets import TARGETS, Target

HANG_SECONDS = 5.0
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
_INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)
# What a number in a text header becomes: zero, negative, huge, fractional, not a number.
_NUMBERS = (b"0", b"-1", b"1", b"255", b"65536", b"2147483648", b"4294967296", b"9223372036854775808",
            b"1e400", b"-0.5", b"1" + b"0" * 40, b"NaN", b"[]", b'"x"', b"null")
OPS = ("flip", "byte", "int", "insert", "delete", "duplicate", "truncate", "splice", "number")


class Hang(BaseException):
    """Raised by SIGALRM in the reader's frame; a BaseException so the reader's own handlers miss it."""


@dataclass
class Stats:
    name: str
    tried: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    samples: list[str] = field(default_factory=list)  # first crash descriptions


Mutation = tuple[str, float, bytes, int]  # (op, position as a fraction, bytes, integer)


def mutate(data: bytes, ops: list[Mutation], seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for op, where, blob, value in ops:
        n = len(buf)
        i = min(int(where * n), max(n - 1, 0))
        if op == "flip" and n:
            buf[i] ^= 1 << (value % 8)
        elif op == "byte" and n:
            buf[i] = _INTERESTING_BYTES[value % len(_INTERESTING_BYTES)]
        elif op == "int" and n:
            width = (1, 2, 4, 8)[value % 4]
            word = _INTERESTING_INTS[(value >> 2) % len(_INTERESTING_INTS)] & ((1 << 8 * width) - 1)
            buf[i : i + width] = word.to_bytes(width, "little" if value & 64 else "big")
        elif op == "insert":
            buf[i:i] = blob
        elif op == "delete":
            del buf[i : i + 1 + value % 64]
        elif op == "duplicate" and n:
            buf[i:i] = buf[i : i + 1 + value % 256]
        elif op == "truncate":
            del buf[i:]
        elif op == "splice" and seeds:
            other = seeds[value % len(seeds)]
            buf[i:] = other[min(int(where * len(other)), len(other)) :]
        elif op == "number":
            spans = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?", bytes(buf[:65536]))]
            if spans:
                a, b = spans[value % len(spans)]
                buf[a:b] = _NUMBERS[(value >> 8) % len(_NUMBERS)]
    return bytes(buf)


_mutations = st.lists(st.tuples(st.sampled_from(OPS), st.floats(0.0, 1.0), st.binary(max_size=8),
                                st.integers(0, 2**20)), min_size=0, max_size=4)


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"no answer in {seconds:g} s")

    # CPU seconds of this process, not wall seconds: a reader preempted by other jobs on a shared machine
    # (or a run paused with SIGSTOP) is not hanging; one spinning on a hostile header is.
    previous = signal.signal(signal.SIGPROF, ring)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def fuzz(t: Target, n: int, crash_dir: Path | None = None, hang_seconds: float = HANG_SECONDS) -> Stats:
    """`n` mutated inputs through `t.read`; the seeds themselves go first and must be accepted."""
    stats = Stats(t.name)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{t.name}-") as scratch:
        tmp = Path(scratch)
        seeds = t.seeds(tmp)
        for s in seeds:  # a reader that refuses its own valid files would make every "refused" meaningless
            t.read(s, tmp)

        def one(data: bytes) -> None:
            t0 = time.perf_counter()
            try:
                with _alarm(hang_seconds):
                    t.read(data, tmp)
                stats.accepted += 1
            except UserError as e:
                stats.refused += 1
                assert "\n" not in str(e)
            except Hang:
                stats.hangs += 1
                _keep(stats, data, crash_dir, f"hang over {hang_seconds:g} s")
            except Exception as e:  # the crash the fuzzer hunts (KeyboardInterrupt still stops it)
                stats.crashes += 1
                where = traceback.extract_tb(e.__traceback__)[-1]
                _keep(stats, data, crash_dir, f"{type(e).__name__}: {str(e)[:80]} at {where.filename}:{where.lineno}")
            dt = time.perf_counter() - t0
            stats.tried += 1
            stats.seconds += dt
            stats.slowest_ms = max(stats.slowest_ms, dt * 1000)

        @settings(max_examples=n, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.integers(0, len(seeds) - 1), _mutations)
        def run(i: int, ops: list[Mutation]) -> None:
            one(mutate(seeds[i], ops, seeds))

        run()
    return stats


def _keep(stats: Stats, data: bytes, crash_dir: Path | None, what: str) -> None:
    if len(stats.samples) < 5:
        stats.samples.append(what)
        if crash_dir is not None:
            crash_dir.mkdir(parents=True, exist_ok=True)
            (crash_dir / f"{stats.name}-{len(stats.samples)}.bin").write_bytes(data)


def table(rows: list[Stats]) -> str:
    head = f"{'reader':<20} {'inputs':>8} {'crashes':>8} {'hangs':>6} {'refused':>8} {'accepted':>9} " \
           f"{'seconds':>8} {'ms/input':>9} {'slowest ms':>11}"
    lines = [head, "-" * len(head)]
    for s in rows:
        per = s.seconds / s.tried * 1000 if s.tried else 0.0
        lines.append(f"{s.name:<20} {s.tried:>8} {s.crashes:>8} {s.hangs:>6} {s.refused:>8} {s.accepted:>9} "
                     f"{s.seconds:>8.1f} {per:>9.2f} {s.slowest_ms:>11.1f}")
    return "\n".join(lines)


def targets(names: list[str] | None = None) -> list[Target]:
    unknown = [n for n in names or [] if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown fuzz target(s) {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    return [TARGETS[n] for n in names] if names else list(TARGETS.values())
