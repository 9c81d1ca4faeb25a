"""Search under a budget (SPEC §13): the best pipeline for a user's constraint, every trial a real
pipeline measured as shipped. budget.py (the constraint and objective), space.py (templates and
ranges), sensitivity.py (per-layer curves that shape the ranges), trial.py (one pipeline through the
step cache, measured on validation), study.py (Optuna: storage, sampler, seeded trials), tables.py
(trials.csv, pareto.csv), finals.py (a speed search's fastest trials timed again, together), run.py
(`deepshrink search`), recipe.py (a recipe's `[search]`, run as a study stage)."""

from deepshrink.search import recipe  # noqa: F401  (registers the [search] study stage)
from deepshrink.search.budget import METRICS, Budget, parse_budget
from deepshrink.search.run import SearchOptions, SearchResult, run_search
from deepshrink.search.space import TEMPLATES, SearchSpace

__all__ = ["METRICS", "TEMPLATES", "Budget", "SearchOptions", "SearchResult", "SearchSpace", "parse_budget",
           "run_search"]
