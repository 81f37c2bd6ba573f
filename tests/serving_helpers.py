"""A real BentoML service on tiny models, for the tests that talk to it over HTTP
(test_serving, test_security, test_fuzz) and the scripted reliability checks: the bundle
(tiny Llama + LoRA adapter, tiny embedding model, real FAISS index), a started
`bentoml serve` process, and a plain urllib client that returns every status."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from driftloop.serving.supervisor.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-7f3a"


def make_bundle(root: Path, tiny_llama: str, tiny_embedding_model: str, extra_texts: list[str] | None = None, shadow: bool = False):
    """24 prose sections (chunk ids c000-c023), then `extra_texts` as further chunks. With
    `shadow`, the champion and a shadow adapter are both random (B not zero), so each
    changes the answers, and the shadow is served beside the champion."""
    import hashlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from conftest import prose
    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import weights_hash
    from driftloop.registry import AdapterRegistry
    from driftloop.retrieval.store import RetrievalStore
    from driftloop.serving.bundle import build_bundle

    rng = random.Random(0)
    texts = [f"Section {i}. " + prose(rng, 2) for i in range(24)] + list(extra_texts or [])
    chunks = [{"chunk_id": f"c{i:03d}", "doc_id": f"d{i // 4}", "title": f"doc {i // 4}", "text": t, "start_char": 0, "end_char": len(t)}
              for i, t in enumerate(texts)]
    store = RetrievalStore(root / "retrieval")
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts, embedder, 8)
    index_folder, _ = store.build_index(embeddings, chunks)

    registry = AdapterRegistry(root / "registry")

    def adapter(name: str, seed: int, targets: list[str]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=targets, init_lora_weights=not shadow))
        peft_model.save_pretrained(root / name)
        return registry.publish(root / name, {"note": f"serving test {name}"})

    champion = adapter("adapter", 0, ["q_proj", "v_proj"])
    second = adapter("shadow_adapter", 1, ["q_proj", "k_proj", "o_proj"]) if shadow else None
    base = {"name": "tiny-llama", "path": tiny_llama, "version": weights_hash(Path(tiny_llama))}
    settings = {"embedding_precision": "fp32", "max_input_chars": 2000, **({"generator_precision": "fp32"} if shadow else {})}
    return build_bundle(root / "bundles", base_model=base, adapter=champion.path, adapter_version=champion.version, index_folder=index_folder,
                        embedding_model=tiny_embedding_model, prompt_version="rag.v1", settings=settings,
                        shadow_adapter=second.path if second else None, shadow_version=second.version if second else None)


@contextlib.contextmanager
def dagster_ui(env: dict, cwd: Path, timeout_s: float = 180):
    """`dg dev` (webserver and daemon) on a free loopback port, yielding the port once the
    webserver answers; the whole process group is stopped after."""
    from cli import commands

    port = free_port()
    ui = subprocess.Popen(commands.ui(port), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "dg dev did not come up"
                time.sleep(1)
        yield port
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


def free_port_pair() -> int:
    """A port whose successor is free too: the supervisor's control port is port + 1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError("no two adjacent free ports")


def call(port, path, body=None, key=KEY, raw: bytes | None = None, method=None, headers: dict | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method or ("POST" if data is not None else "GET"))
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextlib.contextmanager
def serve(root: Path, bundle, env: dict | None = None, timeout_s: float = 240):
    """`bentoml serve` of bento/service.py on `bundle`, ready (warmed up) on a free port;
    stdout and stderr go to <root>/serve.log. Yields {port, bundle, root, proc, log}."""
    port = free_port()
    full_env = {**os.environ, "DRIFTLOOP_BUNDLE": str(bundle.folder), "DRIFTLOOP_API_KEY": KEY, "DRIFTLOOP_HOME": str(root),
                "BENTOML_HOME": str(root / "bentoml"), "DRIFTLOOP_PRICE_PER_1K_COMPLETION": "0.5", "BENTOML_DO_NOT_TRACK": "true",
                "DRIFTLOOP_MAX_CONCURRENCY": "8", **(env or {})}
    log_path = root / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:DriftloopRAG", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                if call(port, "/readyz", key=None)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(1)
        yield {"port": port, "bundle": bundle, "root": root, "proc": proc, "log": log_path}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def record_figures(name: str, figures: dict) -> dict:
    """The measured figures of a check, written to $DRIFTLOOP_RELIABILITY_REPORT/<name>.json
    when the scripted run (reliability/run.py) asks for them, so RELIABILITY.md quotes
    what ran rather than what someone typed."""
    folder = os.environ.get("DRIFTLOOP_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"\n{name}: {json.dumps(figures, sort_keys=True)}")
    return figures


def read_request_log(root: Path, kind: str = "requests") -> list[dict]:
    return [json.loads(line) for path in sorted((Path(root) / kind).glob("date=*/*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_tiny_models(folder: Path) -> tuple[str, str]:
    """The tiny Llama and tiny embedding model of tests/conftest.py's fixtures, built into
    `folder` for the scripts under reliability/ that run outside pytest."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from driftloop.models.embedding import resolve_embedding_model
    from driftloop.models.generator import PACKAGED_GGUF, packaged_gguf

    folder = Path(folder)
    llama, raw, st = folder / "tiny-llama", folder / "tiny-bert-raw", folder / "tiny-st"
    if not (llama / "config.json").is_file():
        gguf = packaged_gguf(next(iter(PACKAGED_GGUF)))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(llama)
        tokenizer.save_pretrained(llama)
    if not (st / "modules.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_embedding_model("all-MiniLM-L6-v2"))
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256)).save_pretrained(raw)
        tokenizer.save_pretrained(raw)
        SentenceTransformer(modules=[models.Transformer(str(raw), max_seq_length=128), models.Pooling(32, "mean")]).save(str(st))
    return str(llama), str(st)
