"""A compression study: recipe.py (TOML -> validated Recipe), plan.py (variants, units, cache keys),
cache.py (step outputs on disk, shared prefixes), variant.py (one variant: export -> measure -> rows),
unit.py (a baseline and its pipeline tree), executor.py (where units run), run.py (the sequence,
from a recipe to the report)."""

