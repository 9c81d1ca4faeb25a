"""Quiet timing across a study's worker processes: a readers-writer lock on two files of the run directory.

CPU work of a worker (a training batch, an accuracy pass, an export) holds the lock shared; a timing holds it
exclusive, so nothing else in the study runs while a variant is timed. Without it, one worker timed while
the other trained: identical students timed 1.46x apart in one study (SPEC §6 asks times under one load).

flock(2) has no writer preference, so a gate file gives it one: a timer takes the gate exclusively (no new
shared holder gets in), then waits for the current holders to leave — at most one training batch.
Outside a study (`train`, `compress`, the API) nothing is enabled and both context managers do nothing.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Lock:
    gate: int  # fds: one open file description per process, so depth counting makes the lock reentrant
    main: int
    shared: int = 0  # nesting depth of busy()
    exclusive: int = 0  # nesting depth of quiet()


_LOCK: list[_Lock] = []  # this process's lock, once a study enabled it


def enable(run_dir: Path) -> None:
    """Join the run directory's lock (each worker process calls this once)."""
    disable()
    run_dir.mkdir(parents=True, exist_ok=True)
    fds = [os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o644) for name in (".quiet-gate.lock", ".quiet.lock")]
    _LOCK.append(_Lock(*fds))


def disable() -> None:
    while _LOCK:
        lk = _LOCK.pop()
        os.close(lk.gate)  # closing releases whatever this process held
        os.close(lk.main)


def _take_shared(lk: _Lock) -> None:
    fcntl.flock(lk.gate, fcntl.LOCK_SH)  # waits while a timer holds the gate
    fcntl.flock(lk.main, fcntl.LOCK_SH)
    fcntl.flock(lk.gate, fcntl.LOCK_UN)


@contextmanager
def busy() -> Iterator[None]:
    """CPU work that must not run while another worker times (reentrant; free outside a study)."""
    if not _LOCK:
        yield
        return
    lk = _LOCK[0]
    if lk.shared == 0 and lk.exclusive == 0:
        _take_shared(lk)
    lk.shared += 1
    try:
        yield
    finally:
        lk.shared -= 1
        if lk.shared == 0 and lk.exclusive == 0:
            fcntl.flock(lk.main, fcntl.LOCK_UN)


@contextmanager
def quiet() -> Iterator[None]:
    """A timing: waits until no other worker of the study is busy, and keeps them waiting until done."""
    if not _LOCK or _LOCK[0].exclusive:
        yield
        return
    lk = _LOCK[0]
    if lk.shared:  # let go first: two workers each holding shared while queueing for the gate would deadlock
        fcntl.flock(lk.main, fcntl.LOCK_UN)
    fcntl.flock(lk.gate, fcntl.LOCK_EX)
    fcntl.flock(lk.main, fcntl.LOCK_EX)
    lk.exclusive = 1
    try:
        yield
    finally:
        lk.exclusive = 0
        fcntl.flock(lk.main, fcntl.LOCK_SH if lk.shared else fcntl.LOCK_UN)
        fcntl.flock(lk.gate, fcntl.LOCK_UN)
