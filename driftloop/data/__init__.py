"""Data stage: ingest, validate, derive QA pairs and instruction examples."""
