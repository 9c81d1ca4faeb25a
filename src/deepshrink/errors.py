"""The one exception type that means "the user's input is wrong" (exit code 2, one line)."""


class UserError(Exception):
    """Bad input: a file, flag, recipe key or value. The message names it and says what is wrong."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line: the CLI prints it as the single stderr line.
        super().__init__(" ".join(message.split()))
