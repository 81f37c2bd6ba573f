"""Shared by the benchmarks: the default corpus chunked as the pipeline chunks it."""

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from driftloop.data.pydocs import python_docs
from driftloop.data.qa import derive_qa_pairs
from driftloop.models.hardware import cpu_flags, cpu_has_fast_bf16, physical_cores
from driftloop.retrieval.chunking import chunk_document


def corpus_chunks(tokenizer, limit_docs: int | None = None, chunk_tokens: int = 200, overlap: int = 40):
    docs = [d.to_row() for d in python_docs()][:limit_docs]
    chunks = []
    for doc in docs:
        cs, _ = chunk_document(doc, tokenizer, chunk_tokens, overlap)
        chunks += [c.to_row() for c in cs]
    return docs, chunks


def eval_questions(docs, limit: int = 300):
    from driftloop.data.records import Document

    pairs = derive_qa_pairs(Document(d["doc_id"], d["uri"], d["title"], d["format"], d["text"], d["content_hash"]) for d in docs)
    return [p.to_row() for p in pairs if p.split == "eval"][:limit]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return f"{cpu_model()}, {physical_cores()} cores, {' '.join(simd) or 'no AVX2'}, fast bf16: {cpu_has_fast_bf16()}"


@contextmanager
def timer(out: dict, key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


class EmbedPeer:
    """bench/peers/embed_peer.py in the peer venv, one JSON command and reply a line."""

    def __init__(self, python: str, model: str, texts: Path, cache: Path, log: Path) -> None:
        # A private HOME: OpenVINO's telemetry opt-out file is written there, not in the user's.
        env = {**os.environ, **OFFLINE, "HOME": str(cache / "home")}
        (cache / "home").mkdir(parents=True, exist_ok=True)
        self.log = log
        script = Path(__file__).resolve().parent / "peers" / "embed_peer.py"
        self.proc = subprocess.Popen([python, str(script), "--model", model, "--texts", str(texts), "--cache", str(cache)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer process died on {command}; its log:\n{self.log.read_text()[-4000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
