"""Embedding and index artifacts on disk: content-addressed, cached, verified.

Layout under the store root:
  embeddings/<model>-<precision>/<version>/{vectors.npy, hashes.json, chunk_ids.json, manifest.json}
  embeddings/<model>-<precision>/current.json
  index/<version>/{index.faiss, chunks.jsonl, manifest.json}
  index/current.json      the last index that passed its quality check; what serving loads
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from driftloop.artifacts import ArtifactError, publish_folder, read_pointer, staging_dir, verify, write_pointer
from driftloop.retrieval.chunking import embed_text
from driftloop.retrieval.index import INDEX_FILE, IndexSpec, build_index, choose_spec
from driftloop.retrieval.lexical import LEXICAL_DIR, build_lexical


@dataclass
class EmbeddingSet:
    version: str
    folder: Path
    vectors: np.ndarray
    chunk_ids: list[str]
    hashes: list[str]


@dataclass
class EmbedStats:
    total: int
    reused: int
    embedded: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


class RetrievalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- embeddings -------------------------------------------------------------------------
    def _embedding_family(self, model_fingerprint: str, precision: str) -> Path:
        return self.root / "embeddings" / f"{model_fingerprint}-{precision}"

    def load_embeddings(self, folder: Path, mmap: bool = True) -> EmbeddingSet:
        manifest = verify(folder)
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        return EmbeddingSet(
            version=manifest["version"], folder=folder, vectors=vectors,
            chunk_ids=json.loads((folder / "chunk_ids.json").read_text()),
            hashes=json.loads((folder / "hashes.json").read_text()),
        )

    def current_embeddings(self, model_fingerprint: str, precision: str) -> EmbeddingSet | None:
        family = self._embedding_family(model_fingerprint, precision)
        pointer = read_pointer(family / "current.json")
        if pointer is None:
            return None
        try:
            return self.load_embeddings(family / pointer["version"])
        except (ArtifactError, OSError, ValueError):
            # A damaged cache costs a re-embed, never a wrong vector.
            return None

    def embed(
        self,
        chunk_ids: Sequence[str],
        hashes: Sequence[str],
        texts: Sequence[str],
        encoder,
        batch_size: int,
        progress: Callable | None = None,
    ) -> tuple[EmbeddingSet, EmbedStats]:
        """Vectors for every chunk; those whose content hash the current set already has are reused."""
        family = self._embedding_family(encoder.fingerprint, encoder.precision)
        version = hashlib.sha256(
            "\n".join([encoder.fingerprint, encoder.precision, *hashes, *chunk_ids]).encode()
        ).hexdigest()[:20]
        target = family / version
        start = time.perf_counter()
        if target.is_dir():
            try:
                existing = self.load_embeddings(target)
                write_pointer(family / "current.json", {"version": version})
                return existing, EmbedStats(len(hashes), len(hashes), 0, time.perf_counter() - start)
            except ArtifactError:
                shutil.rmtree(target)
        previous = self.current_embeddings(encoder.fingerprint, encoder.precision)
        known = {h: i for i, h in enumerate(previous.hashes)} if previous else {}
        vectors = np.empty((len(hashes), encoder.dimension), dtype=np.float32)
        missing = [i for i, h in enumerate(hashes) if h not in known]
        for i, h in enumerate(hashes):
            if h in known:
                vectors[i] = previous.vectors[known[h]]
        if missing:
            vectors[missing] = encoder.encode([texts[i] for i in missing], batch_size=batch_size, progress=progress)
        staging = staging_dir(family)
        np.save(staging / "vectors.npy", vectors)
        (staging / "chunk_ids.json").write_text(json.dumps(list(chunk_ids)))
        (staging / "hashes.json").write_text(json.dumps(list(hashes)))
        publish_folder(staging, target, {"version": version, "model": encoder.describe(), "count": len(hashes)})
        write_pointer(family / "current.json", {"version": version})
        seconds = time.perf_counter() - start
        result = EmbeddingSet(version, target, vectors, list(chunk_ids), list(hashes))
        return result, EmbedStats(len(hashes), len(hashes) - len(missing), len(missing), seconds)

    # -- indexes ----------------------------------------------------------------------------
    @property
    def index_root(self) -> Path:
        return self.root / "index"

    def build_index(self, embeddings: EmbeddingSet, chunks: Sequence[dict], spec: IndexSpec | None = None) -> tuple[Path, IndexSpec]:
        import faiss

        if len(chunks) != len(embeddings.chunk_ids) or any(c["chunk_id"] != i for c, i in zip(chunks, embeddings.chunk_ids, strict=True)):
            raise ArtifactError("chunks and embeddings are out of step: re-materialize retrieval/embeddings")
        spec = spec or choose_spec(len(chunks))
        version = hashlib.sha256(f"{embeddings.version}:{spec.key()}".encode()).hexdigest()[:20]
        target = self.index_root / version
        if target.is_dir():
            try:
                verify(target)
                return target, spec
            except ArtifactError:
                shutil.rmtree(target)
        index = build_index(np.ascontiguousarray(embeddings.vectors, dtype=np.float32), spec)
        staging = staging_dir(self.index_root)
        faiss.write_index(index, str(staging / INDEX_FILE))
        with (staging / "chunks.jsonl").open("w", encoding="utf-8") as handle:
            for c in chunks:
                row = {k: c[k] for k in ("chunk_id", "doc_id", "title", "text", "start_char", "end_char")}
                if c.get("screened_by"):
                    row["screened_by"] = c["screened_by"]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if spec.hybrid:
            build_lexical([embed_text(c["title"], c["text"]) for c in chunks], staging / LEXICAL_DIR)
        manifest = {"version": version, "embeddings_version": embeddings.version, "index": spec.__dict__, "count": len(chunks),
                    "dimension": int(embeddings.vectors.shape[1]), "model": json.loads((embeddings.folder / "manifest.json").read_text())["model"]}
        return publish_folder(staging, target, manifest), spec

    def promote_index(self, folder: Path, metrics: dict) -> None:
        write_pointer(self.index_root / "current.json", {"version": folder.name, "metrics": metrics})

    def current_index_folder(self) -> Path:
        pointer = read_pointer(self.index_root / "current.json")
        if pointer is None:
            raise ArtifactError(f"no index has passed its quality check yet under {self.index_root}: materialize retrieval/vector_index")
        return self.index_root / pointer["version"]
