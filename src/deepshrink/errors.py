"""The one exception type that means "the user's input is wrong" (exit code 2, one line), and the guard
every reader of a user's file goes through."""

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input: a file, flag, recipe key or value. The message names it and says what is wrong."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line: the CLI prints it as the single stderr line.
        super().__init__(" ".join(message.split()))


@contextmanager
def malformed(source: object, what: str) -> Iterator[None]:
    """Inside, any exception but a UserError (json, struct, zlib, numpy, torch, protobuf each raise their
    own types on a corrupt file) becomes one UserError naming the file: a bad file is the user's to fix."""
    try:
        yield
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # SystemExit: a user's model module calling exit() on import
        first = (str(e).splitlines() or [""])[0][:120]
        raise UserError(f"{source}: malformed {what} ({type(e).__name__}{': ' + first if first else ''})") from None
