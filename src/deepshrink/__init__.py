"""deepshrink: compress neural networks for embedded deployment and measure what each compression buys."""

from deepshrink.errors import UserError
from deepshrink.models import create_model, list_models

__all__ = ["UserError", "create_model", "list_models"]
__version__ = "0.1.0"
