"""deepshrink: compress neural networks for embedded deployment and measure what each compression buys.

The Python API (SPEC §10; api/__init__.py): `load_data`, `Data.from_arrays`, `create_model`, `load_model`,
`train`, `compress`, `bench` (also `measure`), `mcu`, `study`, `search`, `sensitivity`, `report`, `show`,
`recipes`, the step configs under `steps`, and `UserError` for bad input. Each verb is a CLI command of the
same name.
"""

import types
from typing import Any

from deepshrink import search as _search_package
from deepshrink import steps, study
from deepshrink._version import __version__
from deepshrink.api import (
    McuBuild,
    Result,
    bench,
    compress,
    data_download,
    data_verify,
    data_where,
    load_data,
    load_model,
    mcu,
    measure,
    recipes,
    report,
    sensitivity,
    show,
    train,
)
from deepshrink.api import search as _run_search
from deepshrink.api import study as _run_study
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

__all__ = ["Data", "McuBuild", "Result", "UserError", "__version__", "bench", "compress", "create_model",
           "data_download", "data_verify", "data_where", "list_models", "load_data", "load_model", "mcu", "measure",
           "recipes", "report", "search", "sensitivity", "show", "steps", "study", "train"]
