"""FAISS indexes over unit vectors (inner product = cosine): exact or approximate, with a
BM25 index beside them for hybrid search (driftloop.retrieval.lexical)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from driftloop.artifacts import ArtifactError, verify
from driftloop.retrieval.lexical import LEXICAL_DIR, LexicalIndex, pad, reciprocal_rank_fusion

INDEX_FILE = "index.faiss"


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat | hnsw | ivf
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int = 0
    nprobe: int = 16
    hybrid: bool = True
    fusion_depth: int = 100
    rrf_constant: int = 60

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def choose_spec(n: int, kind: str = "auto", exact_max: int = 50_000, **params) -> IndexSpec:
    """Exact search while it is cheap; HNSW beyond, where flat search grows linearly."""
    if kind == "auto":
        kind = "flat" if n <= exact_max else "hnsw"
    if kind not in {"flat", "hnsw", "ivf"}:
        raise ValueError(f"unknown index kind {kind!r}; choose auto, flat, hnsw or ivf")
    if kind == "ivf" and not params.get("nlist"):
        params["nlist"] = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
    return IndexSpec(kind=kind, **params)


def build_index(vectors: np.ndarray, spec: IndexSpec):
    import faiss

    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError("cannot build an index over zero vectors")
    dim = vectors.shape[1]
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = spec.nprobe
    index.add(vectors)
    return index


class VectorIndex:
    """A verified index folder: FAISS index plus the chunk rows its ids point at."""

    def __init__(self, folder: Path) -> None:
        import faiss

        self.folder = Path(folder)
        self.manifest = verify(self.folder)
        self.index = faiss.read_index(str(self.folder / INDEX_FILE))
        with (self.folder / "chunks.jsonl").open(encoding="utf-8") as handle:
            self.chunks = [json.loads(line) for line in handle]
        if self.index.ntotal != len(self.chunks):
            raise ArtifactError(f"{self.folder}: index holds {self.index.ntotal} vectors for {len(self.chunks)} chunks")
        spec = self.manifest["index"]
        if spec["kind"] == "hnsw":
            self.index.hnsw.efSearch = spec["ef_search"]
        elif spec["kind"] == "ivf":
            self.index.nprobe = spec["nprobe"]
            self.index.make_direct_map()
        # An index built before hybrid search has no BM25 files and searches by vectors alone.
        self.lexical = LexicalIndex(self.folder / LEXICAL_DIR, len(self.chunks)) if spec.get("hybrid") else None

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def search(self, queries: np.ndarray, k: int, texts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-k chunk ids per query (-1 pads a short row) and their cosine similarity
        to the query. With the queries' `texts` and a hybrid index, the ranking fuses the
        vectors' and BM25's; the score stays the cosine either way, the signal drift
        monitoring compares across time."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.lexical is None or texts is None:
            return self.index.search(queries, k)
        if len(texts) != len(queries):
            raise ValueError(f"{len(texts)} query texts for {len(queries)} query vectors")
        spec = self.manifest["index"]
        depth = max(k, spec["fusion_depth"])
        _, dense = self.index.search(queries, min(depth, self.index.ntotal))
        lexical = self.lexical.search(texts, depth)
        ids = pad([reciprocal_rank_fusion([[int(i) for i in d], lx], k, spec["rrf_constant"]) for d, lx in zip(dense, lexical, strict=True)], k)
        vectors = self.index.reconstruct_batch(np.clip(ids, 0, None).ravel()).reshape(*ids.shape, -1)
        scores = np.where(ids >= 0, np.einsum("qd,qkd->qk", queries, vectors), -np.inf).astype(np.float32)
        return scores, ids
