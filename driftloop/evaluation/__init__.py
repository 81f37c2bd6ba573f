"""Evaluation of the RAG path: answers from every model on the same questions, scores,
the promotion gate, and the report."""
