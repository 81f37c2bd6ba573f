"""One folder per lineage, each with its defs.yaml (orchestration/lineage.py)."""
