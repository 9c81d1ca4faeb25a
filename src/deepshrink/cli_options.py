"""Options and helpers every command module shares (cli.py, cli_search.py)."""

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from deepshrink.config import parse_kwargs
from deepshrink.errors import UserError

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding mnist/ and cifar10/ "
                                              "(else $DEEPSHRINK_DATA, the user cache, then download).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for initialisation, shuffling and augmentation.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AllowEmpty = Annotated[bool, typer.Option("--allow-empty-classes", help="Accept generic data (idx:, folder:, npz:) "
                                        "whose labels leave a class without a training example.")]
ModelArg = Annotated[list[str] | None, typer.Option("--model-arg", help="KEY=VALUE passed to your model's "
                                                    "callable; repeatable.")]
ChoiceMargin = Annotated[float, typer.Option(
    "--choice-margin", help="The least lead (a fraction of its time) a faster runtime or INT8 mode needs, beyond the "
                            "noise measured in the same run, to replace the default one.")]


def default(verb: Callable[..., Any], name: str) -> Any:
    """The API verb's own default for a parameter: each default is written once, in the verb's signature."""
    return inspect.signature(verb).parameters[name].default


def model_args(items: list[str] | None) -> dict[str, Any]:
    return parse_kwargs(items or [], "--model-arg")


def console() -> Console:
    """Piped output (files, CI logs) gets wide lines instead of rich's 80-column folding."""
    return Console() if sys.stdout.isatty() else Console(width=200, soft_wrap=True)


def check_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected auto, cpu or cuda")
    return device
