"""deepshrink: compress neural networks for embedded deployment and measure what each compression buys.

The Python API (SPEC §10): `load_data`, `Data.from_arrays`, `create_model`, `train`, `compress`,
`measure`, `study`, `search`, `sensitivity`, the step configs under `steps`, and `UserError` for bad input.
"""

import types
from typing import Any

from deepshrink import search as _search_package
from deepshrink import steps, study
from deepshrink._version import __version__
from deepshrink.api import Result, compress, load_data, load_model, measure, train
from deepshrink.api import study as _run_study
from deepshrink.api_search import search as _run_search
from deepshrink.api_search import sensitivity
from deepshrink.data import DataSplits as Data
from deepshrink.errors import UserError
from deepshrink.models import create_model, list_models


def _callable_package(package: types.ModuleType, verb: Any) -> None:
    """`ds.study(recipe, ...)` and `ds.search(checkpoint, ...)` (SPEC §10, §13) call the subpackages of
    the same names: a function bound to `deepshrink.study` would hide the subpackage from
    `import deepshrink.study.run as run`. Set here, where both are already imported."""

    class _Package(types.ModuleType):
        __doc__ = package.__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return verb(*args, **kwargs)

    _Package.__call__.__doc__ = verb.__doc__
    package.__class__ = _Package


_callable_package(study, _run_study)
_callable_package(_search_package, _run_search)
search = _search_package

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
           "search",
           "sensitivity",
           "steps",
           "study",
           "train",
]
