"""deepshrink: compress neural networks for embedded deployment and measure what each compression buys.

The Python API (SPEC §10): `load_data`, `Data.from_arrays`, `create_model`, `train`, `compress`,
`measure`, `study`, the step configs under `steps`, and `UserError` for bad input.
"""

import types
from typing import Any

from deepshrink import steps, study
from deepshrink._version import __version__
from deepshrink.api import Result, compress, load_data, load_model, measure, train
from deepshrink.api import study as _run_study
from deepshrink.data import DataSplits as Data
from deepshrink.errors import UserError
from deepshrink.models import create_model, list_models


class _StudyPackage(types.ModuleType):
    """`ds.study(recipe, out=...)` (SPEC §10) calls the `deepshrink.study` subpackage: the API verb and
    the subpackage share one name, and a function bound to `deepshrink.study` would hide the subpackage
    from `import deepshrink.study.run as run`. Set here, where both are already imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run a whole study from a recipe: see `deepshrink.api.study`."""
        return _run_study(*args, **kwargs)


study.__class__ = _StudyPackage

__all__ = [
           "Data",
           "Result",
           "UserError",
           "__version__",
           "compress",
           "create_model",
           "list_models",
           "load_data",
           "load_model",
           "measure",
           "steps",
           "study",
           "train",
]
