"""The techniques' frozen config dataclasses, for the Python API (`ds.steps.Quantize(...)`); each is
what `parse_step("NAME:key=value,...")` gives for that step."""

from deepshrink.compress.cluster import ClusterConfig as Cluster
from deepshrink.compress.distill import DistillConfig as Distill
from deepshrink.compress.encode import EncodeConfig as Encode
from deepshrink.compress.prune import PruneStructuredConfig as PruneStructured
from deepshrink.compress.prune import PruneUnstructuredConfig as PruneUnstructured
from deepshrink.compress.quantize import QuantizeConfig as Quantize

__all__ = ["Cluster", "Distill", "Encode", "PruneStructured", "PruneUnstructured", "Quantize"]
