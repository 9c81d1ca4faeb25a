"""Progress display: rich bars with ETA, or nothing (--quiet, tests, worker processes)."""

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """A thin facade so library code can report progress without knowing if anyone watches."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._rich: RichProgress | None = None
        if enabled:
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False,
            )

    def __enter__(self) -> "Progress":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.stop()

    def add(self, description: str, total: int) -> int:
        if self._rich is None:
            return 0
        return int(self._rich.add_task(description, total=total, info=""))

    def update(self, task: int, advance: int = 0, info: str | None = None, description: str | None = None) -> None:
        if self._rich is None:
            return
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = info
        if description is not None:
            fields["description"] = description
        self._rich.update(TaskID(task), advance=advance, **fields)

    def finish(self, task: int) -> None:
        if self._rich is not None:
            tid = TaskID(task)
            total = next(t.total for t in self._rich.tasks if t.id == tid)
            self._rich.update(tid, completed=total)

    def log(self, message: str) -> None:
        if self._rich is not None:
            self._rich.console.print(message)


def null_progress() -> Progress:
    return Progress(enabled=False)
