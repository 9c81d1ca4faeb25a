"""Result tables (results.csv, latency.csv, layers.csv): upsert by key, atomic writes, resume support."""

import math
from pathlib import Path

import pytest

from deepshrink.results import (
    LATENCY_COLUMNS,
    LATENCY_KEY,
    LAYERS_COLUMNS,
    LAYERS_KEY,
    RESULTS_COLUMNS,
    RESULTS_KEY,
    finished,
    read_rows,
    remove_variant,
    upsert,
    write_rows,
)

COLS = ["variant", "acc", "note"]


def test_write_read_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    rows = [{"variant": "a", "acc": 98.123456789, "note": "x,y \"quoted\""},
            {"variant": "b", "acc": 3, "note": None, "extra": True}]
    write_rows(p, rows, COLS)
    back = read_rows(p)
    assert list(back[0]) == [*COLS, "extra"]  # declared columns first, unknown ones appended
    assert back[0] == {"variant": "a", "acc": "98.123457", "note": "x,y \"quoted\"", "extra": ""}
    assert back[1] == {"variant": "b", "acc": "3", "note": "", "extra": "True"}
    assert float(back[0]["acc"]) == pytest.approx(98.123457)
    assert read_rows(tmp_path / "absent.csv") == []


def test_nan_and_none_are_written_empty(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    write_rows(p, [{"variant": "a", "acc": math.nan, "note": None}], COLS)
    assert p.read_text().splitlines() == ["variant,acc,note", "a,,"]


def test_upsert_replaces_by_key_and_keeps_other_rows(tmp_path: Path) -> None:
    p = tmp_path / "latency.csv"
    base = {"runtime": "torch", "device": "cpu", "threads": 1}
    upsert(p, [{"variant": "a", **base, "batch": 256, "speedup": 1.0},
               {"variant": "a", **base, "batch": 1, "speedup": 1.0},
               {"variant": "b", **base, "batch": 256, "speedup": 2.0}], LATENCY_COLUMNS, LATENCY_KEY)
    upsert(p, [{"variant": "b", **base, "batch": 256, "speedup": 3.0},
               {"variant": "c", **base, "batch": 256, "speedup": 0.5}], LATENCY_COLUMNS, LATENCY_KEY)
    rows = read_rows(p)
    keys = [(r["variant"], r["batch"]) for r in rows]
    assert sorted(keys) == [("a", "1"), ("a", "256"), ("b", "256"), ("c", "256")]  # no duplicate of b
    by_key = {(r["variant"], r["batch"]): r for r in rows}
    assert by_key[("b", "256")]["speedup"] == "3.0"
    assert by_key[("a", "256")]["speedup"] == "1.0" and by_key[("a", "1")]["speedup"] == "1.0"


def test_upsert_matches_keys_as_written_text(tmp_path: Path) -> None:
    # the key of a row read back is text ("1"), of a new row an int (1): they must still match
    p = tmp_path / "r.csv"
    upsert(p, [{"variant": "v", "seed": 1, "status": "failed"}], RESULTS_COLUMNS, RESULTS_KEY)
    upsert(p, [{"variant": "v", "seed": 1, "status": "ok"}], RESULTS_COLUMNS, RESULTS_KEY)
    (row,) = read_rows(p)
    assert row["status"] == "ok" and list(row) == RESULTS_COLUMNS


def _three_tables(run: Path) -> None:
    for variant in ("keep", "drop"):
        upsert(run / "results.csv", [{"variant": variant, "status": "ok"}], RESULTS_COLUMNS, RESULTS_KEY)
        upsert(run / "latency.csv", [{"variant": variant, "runtime": "torch", "device": "cpu", "threads": 1,
                                      "batch": 1}], LATENCY_COLUMNS, LATENCY_KEY)
        upsert(run / "layers.csv", [{"variant": variant, "layer": "fc1"}, {"variant": variant, "layer": "fc2"}],
               LAYERS_COLUMNS, LAYERS_KEY)


def test_remove_variant_drops_it_from_all_three_tables(tmp_path: Path) -> None:
    _three_tables(tmp_path)
    remove_variant(tmp_path, "drop")
    for name, n in (("results.csv", 1), ("latency.csv", 1), ("layers.csv", 2)):
        rows = read_rows(tmp_path / name)
        assert len(rows) == n and {r["variant"] for r in rows} == {"keep"}, name
    (tmp_path / "latency.csv").unlink()
    remove_variant(tmp_path, "keep")  # a missing table is not an error, and is not created
    assert not (tmp_path / "latency.csv").exists()
    assert read_rows(tmp_path / "results.csv") == []


def test_finished_lists_only_ok_rows(tmp_path: Path) -> None:
    assert finished(tmp_path) == set()
    upsert(tmp_path / "results.csv", [{"variant": "a", "status": "ok"}, {"variant": "b", "status": "failed"},
                                      {"variant": "c", "status": ""}, {"variant": "d", "status": "ok"}],
           RESULTS_COLUMNS, RESULTS_KEY)
    assert finished(tmp_path) == {"a", "d"}


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    _three_tables(tmp_path)
    remove_variant(tmp_path, "drop")
    write_rows(tmp_path / "sub" / "x.csv", [{"variant": "a"}], COLS)  # creates the folder
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["latency.csv", "layers.csv", "results.csv", "sub/x.csv"]


def test_a_failed_write_keeps_the_old_table(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    write_rows(p, [{"variant": "a", "acc": 1.0}], COLS)
    before = p.read_bytes()

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("cannot format")

    with pytest.raises(RuntimeError):
        write_rows(p, [{"variant": "b", "acc": Boom()}], COLS)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["t.csv"]
