"""A compression study: recipe.py (TOML -> validated Recipe), plan.py (variants, units, cache keys),
cache.py (step outputs on disk, shared prefixes), variant.py (one variant: export -> measure -> rows),
unit.py (a baseline and its pipeline tree), executor.py (where units run), run.py (the sequence,
from a recipe to the report)."""

import sys
import types
from typing import Any


class _StudyPackage(types.ModuleType):
    """`ds.study(recipe, out=...)` (SPEC §10) calls this package: the API verb and the subpackage share
    one name, and a function bound to `deepshrink.study` would hide the subpackage from
    `import deepshrink.study.run as run`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run a whole study from a recipe: see `deepshrink.api.study`."""
        from deepshrink.api import study

        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _StudyPackage
