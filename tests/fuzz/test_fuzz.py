"""A small fuzzing run of every registered reader (the big one is `make fuzz`): mutated valid files give
a result or one UserError line, never another exception or a hang."""

from pathlib import Path

import pytest

from fuzz_harness import fuzz, mutate
from fuzz_targets import TARGETS, Target


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_reader_survives_mutated_inputs(name: str) -> None:
    stats = fuzz(TARGETS[name], 40, hang_seconds=5.0)
    assert stats.tried >= 20 and stats.crashes == 0 and stats.hangs == 0, stats.samples


def test_mutations_change_the_input_and_keep_it_bytes() -> None:
    seed = b'{"shape": [3, 4], "codec": "lzma"}'
    assert mutate(seed, [], [seed]) == seed
    assert mutate(seed, [("number", 0.0, b"", 1 << 8)], [seed]) == b'{"shape": [-1, 4], "codec": "lzma"}'
    assert mutate(seed, [("truncate", 0.5, b"", 0)], [seed]) == seed[: len(seed) // 2]
    assert mutate(b"", [("flip", 0.3, b"", 3), ("insert", 0.0, b"ab", 0)], []) == b"ab"


def test_a_reader_spinning_past_the_budget_counts_as_a_hang() -> None:
    def spin(data: bytes, tmp: Path) -> None:
        if data != b"ok":  # the seed itself must be accepted
            while True:
                pass

    stats = fuzz(Target("spin", lambda tmp: [b"ok"], spin), 3, hang_seconds=0.2)
    assert stats.hangs >= 1 and stats.crashes == 0
