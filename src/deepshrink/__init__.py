"""deepshrink: compress neural networks for embedded deployment and measure what each compression buys.

The Python API (SPEC §10): `load_data`, `Data.from_arrays`, `create_model`, `train`, `compress`,
`measure`, `study`, the step configs under `steps`, and `UserError` for bad input.
"""

from deepshrink import steps, study  # `study` is the subpackage, callable as the API verb
from deepshrink._version import __version__
from deepshrink.api import Result, compress, load_data, measure, train
from deepshrink.data import DataSplits as Data
from deepshrink.errors import UserError
from deepshrink.models import create_model, list_models

__all__ = [
           "Data",
           "Result",
           "UserError",
           "__version__",
           "compress",
           "create_model",
           "list_models",
           "load_data",
           "measure",
           "steps",
           "study",
           "train",
]
