"""Pruning (SPEC §5): `prune.unstructured` (unstructured.py, on the mask primitives of masks.py) and
`prune.structured` (structured.py, on the unit-removal primitives of units.py); sensitivity.py holds
the per-layer sensitivity analysis. The primitives are usable alone (Torch-Pruning's layering).
"""

from deepshrink.compress.prune.structured import PruneStructuredConfig, apply_prune_structured
from deepshrink.compress.prune.unstructured import PruneUnstructuredConfig, apply_prune_unstructured

__all__ = ["PruneStructuredConfig", "PruneUnstructuredConfig", "apply_prune_structured", "apply_prune_unstructured"]
