"""Retrieval: token-aware chunks, cached embeddings, FAISS indexes and their quality."""
