"""Hybrid retrieval: a BM25 index beside the vectors, fused with them by reciprocal rank.

Dense vectors find paraphrases; BM25 finds the exact terms users type: a command's
name, an option, an error message. Manuals whose pages share headings (Synopsis,
Notes, Examples) need both: a small embedding model puts every page's "Notes" near
each other, while the page's own name, rare in the corpus, is what BM25 ranks on.
Measured on six corpora (BENCHMARKS.md, "Hybrid retrieval"), fusing the two lifted
recall@5 of the derived questions from 0.756 to 0.895 pooled (man pages 0.547 to 0.747).

BM25 is bm25s (Lucene's scoring, k1=1.5, b=0.75, sparse matrices in numpy, saved as
plain files the index manifest checks); fusion is reciprocal rank fusion (Cormack,
Clarke and Buettcher, 2009) with its usual constant 60, the default of Elasticsearch,
OpenSearch and Weaviate, so the two scores' different scales never meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEXICAL_DIR = "bm25"


def _tokens(texts: Sequence[str]):
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", show_progress=False)


def build_lexical(texts: Sequence[str], folder: Path) -> None:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_tokens(texts), show_progress=False)
    retriever.save(str(folder))


class LexicalIndex:
    def __init__(self, folder: Path, size: int) -> None:
        import bm25s

        self.retriever = bm25s.BM25.load(str(folder))
        self.size = size

    def search(self, texts: Sequence[str], depth: int) -> list[list[int]]:
        """Ids of the best `depth` chunks per query, best first; chunks sharing no term
        with the query are left out, so a query of unknown words adds no noise to the fusion."""
        if not texts:
            return []
        ids, scores = self.retriever.retrieve(_tokens(texts), k=min(depth, self.size), show_progress=False)
        return [[int(i) for i, s in zip(row_ids, row_scores, strict=True) if s > 0] for row_ids, row_scores in zip(ids, scores, strict=True)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int, constant: int = 60) -> list[int]:
    """The top `k` ids of several best-first rankings, by sum of 1 / (constant + rank)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, idx in enumerate(ranking, start=1):
            if idx >= 0:
                fused[idx] = fused.get(idx, 0.0) + 1.0 / (constant + rank)
    # Ties go to the earlier ranking's order (dense first), so the result is deterministic.
    order: dict[int, int] = {}
    for idx in (i for ranking in rankings for i in ranking):
        order.setdefault(idx, len(order))
    return sorted(fused, key=lambda idx: (-fused[idx], order[idx]))[:k]


def pad(rows: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Rows of ids as FAISS returns them: fixed width, -1 where there are fewer than k."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for n, row in enumerate(rows):
        out[n, : len(row)] = row[:k]
    return out
