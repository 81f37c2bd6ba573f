"""driftloop: the whole life of an LLM application as one Dagster lineage graph.

This package holds the plain-Python work (ingest, validation, chunking, training,
metrics); it never imports Dagster, so every piece runs and is benchmarked alone.
"""

from driftloop.offline import enforce_offline

enforce_offline()

__all__ = ["enforce_offline"]
