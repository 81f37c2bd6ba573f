"""Serving throughput and latency: the BentoML service against llama.cpp's server and a
naive HTTP server, doing the same RAG work.

Ours: `bentoml serve bento.service:DriftloopRAG` (its event-driven batcher, up to
DRIFTLOOP_MAX_BATCH requests per generate batch, and its prefix cache) on a bundle of the
real default models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), a FAISS index over --docs
documents spread over the default corpus, and a freshly initialised LoRA adapter (r=8 on
q/k/v/o; B is zero at init, so answers equal the base model's, but the served path runs
the adapter). `ours-no-reuse` is the same service with the prefix cache off;
`ours-llamacpp` is the same service with `generator_engine: llamacpp` (the bundle carries
the adapter exported to llama.cpp's LoRA GGUF; batches of --slots requests);
`ours-cache` is `ours` with its semantic cache on (threshold 0.97): each level's questions
start again at the first, so later levels repeat earlier questions, as live traffic does.
llama.cpp: its server code (the `xllamacpp` wheel, in process) on the GGUF the base
model comes from, --slots slots, --threads threads, prompt cache on as it ships,
behind a threaded front doing the same retrieval (see `serve_llamacpp`).
Naive: a stdlib `http.server.HTTPServer` (one request at a time), the same embedding
model through plain sentence-transformers, and greedy generation through
`transformers.pipeline("text-generation")` with the adapter merged, in the precision
ours serves. Every side: the same questions (eval questions of those documents), the
same index (k=3), the same prompt text (rag.v1 plus the service's guardrail suffix), the
same max_new_tokens, the same warm-up, run one after the other. Answers are compared
word for word; some differ because the guardrail canary in the system prompt is random
per process, and llama.cpp's 4-bit kernels round differently.

Each concurrency level sends --requests requests from that many client threads
(closed loop); throughput is completed requests over wall time, latency is per request
as the client sees it. Any non-200 answer is counted and printed.

    .venv/bin/python bench/serving.py [--clients 1 4 16] [--requests 16 32 32] [--max-new-tokens 32] [--docs 60]
        [--sides llamacpp baseline ours-no-reuse ours ours-llamacpp ours-cache] [--slots 16] [--threads N]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true",
                     "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

K = 3
LABELS = {"llamacpp": "llama.cpp server (xllamacpp, prompt cache on)", "baseline": "naive: HTTPServer + pipeline",
          "ours-no-reuse": "driftloop, prefix cache off", "ours": "driftloop (BentoML, event-driven batching, prefix cache)",
          "ours-llamacpp": "driftloop on its llama.cpp engine (same GGUF, adapter exported, --slots per batch)",
          "ours-cache": "driftloop with its semantic cache on (threshold 0.97)"}


def build_bundle_for_bench(work: Path, docs_limit: int, adapter: bool, engines: tuple[str, ...] = ("transformers",)):
    """A serving bundle per generator engine, as the pipeline builds one, and the questions to ask it."""
    import hashlib

    import torch

    from common import corpus_chunks, eval_questions
    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import resolve_base_model
    from driftloop.retrieval.chunking import embed_text
    from driftloop.retrieval.store import RetrievalStore
    from driftloop.serving.bundle import build_bundle

    base = resolve_base_model("SmolLM2-135M-Instruct", ROOT / "artifacts" / "base_models")
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    docs, chunks = corpus_chunks(embedder.tokenizer)
    # An even spread over the corpus, so the index holds documents of the eval split.
    kept = {d["doc_id"] for d in docs[:: max(1, len(docs) // docs_limit)][:docs_limit]}
    chunks = [c for c in chunks if c["doc_id"] in kept]
    store = RetrievalStore(work / "retrieval")
    texts = [embed_text(c["title"], c["text"]) for c in chunks]
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts, embedder, 16)
    index_folder, _ = store.build_index(embeddings, chunks)
    adapter_path = adapter_version = None
    if adapter:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from driftloop.registry import AdapterRegistry

        torch.manual_seed(0)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path),
                                    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
        peft_model.save_pretrained(work / "adapter")
        published = AdapterRegistry(work / "registry").publish(work / "adapter", {"note": "bench/serving.py, untrained"})
        adapter_path, adapter_version = published.path, published.version
    bundles = {engine: build_bundle(work / "bundles", base_model={"name": base.name, "path": base.path, "version": base.version},
                                    adapter=adapter_path, adapter_version=adapter_version, index_folder=index_folder,
                                    embedding_model="all-MiniLM-L6-v2", prompt_version="rag.v1",
                                    settings={"embedding_precision": "auto", "max_input_chars": 4000, "max_input_tokens": 1024,
                                              "generator_engine": engine})
               for engine in engines}
    questions = [q["question"] for q in eval_questions(docs, 5000) if q["doc_id"] in kept]
    return bundles, questions, len(chunks)


def _rag_prompt(embedder, index, chunks, prompt, suffix: str, tokenizer, question: str, k: int) -> tuple[str, list[dict]]:
    """The same prompt text on every side: sentence-transformers retrieval at k, the
    template with the guardrail suffix ours adds, the chat template applied."""
    vector = embedder.encode([question], normalize_embeddings=True, convert_to_numpy=True)
    _, ids = index.search(vector.astype("float32"), k)
    found = [chunks[int(i)] for i in ids[0] if int(i) >= 0]
    messages = prompt.messages(question, "\n\n".join(c["text"] for c in found)[:2000])
    messages[0] = {**messages[0], "content": messages[0]["content"] + suffix}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), found


def serve_baseline(bundle_dir: str, port: int) -> None:
    """The naive server: everything in one process, one request at a time."""
    from http.server import HTTPServer

    import faiss
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from driftloop.evaluation.generate import DTYPES, generator_precision
    from driftloop.models.embedding import resolve_embedding_model
    from driftloop.prompts import load_prompt
    from driftloop.serving.bundle import load_bundle
    from driftloop.serving.guardrails import Guardrails

    bundle = load_bundle(Path(bundle_dir))
    base_path = bundle.spec["base_model"]["path"]
    embedder = SentenceTransformer(resolve_embedding_model(bundle.spec["embedding_model"]), device="cpu", local_files_only=True)
    index = faiss.read_index(str(bundle.index_dir / "index.faiss"))
    chunks = [json.loads(line) for line in (bundle.index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if bundle.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(bundle.adapter_dir)).merge_and_unload()
    # The precision ours serves in (bf16 where the CPU has native bf16), not a slower one.
    model = model.to(getattr(torch, DTYPES[generator_precision("auto", "cpu")]))
    generator = pipeline("text-generation", model=model.eval(), tokenizer=tokenizer, device="cpu")
    prompt = load_prompt(bundle.spec.get("prompt_version", "rag.v1"))
    suffix = Guardrails().system_suffix()  # ours adds it to every prompt; same length here

    def answer(question: str, k: int, max_new_tokens: int) -> dict:
        text, found = _rag_prompt(embedder, index, chunks, prompt, suffix, tokenizer, question, k)
        out = generator(text, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
        return {"answer": out[0]["generated_text"].strip(), "chunks": [{"chunk_id": c["chunk_id"]} for c in found]}

    _serve_http(port, answer, HTTPServer)


def serve_llamacpp(bundle_dir: str, port: int, slots: int, threads: int) -> None:
    """llama.cpp's server as users run it for RAG: its own server code (xllamacpp, in
    process) on the same GGUF the base model was converted from, `slots` parallel slots,
    `threads` threads, its prompt cache on (the default), behind a threaded HTTP front
    that retrieves exactly as the baseline does and sends the same prompt text. The bench's
    adapter is untrained (B = 0), so llama.cpp runs the base GGUF alone: its best case,
    with nothing beside the quantised matmuls."""
    from http.server import ThreadingHTTPServer
    from threading import Lock

    import faiss
    import xllamacpp
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from driftloop.models.embedding import resolve_embedding_model
    from driftloop.models.generator import PACKAGED_GGUF, packaged_gguf
    from driftloop.prompts import load_prompt
    from driftloop.serving.bundle import load_bundle
    from driftloop.serving.guardrails import Guardrails

    bundle = load_bundle(Path(bundle_dir))
    tokenizer = AutoTokenizer.from_pretrained(bundle.spec["base_model"]["path"])
    embedder = SentenceTransformer(resolve_embedding_model(bundle.spec["embedding_model"]), device="cpu", local_files_only=True)
    index = faiss.read_index(str(bundle.index_dir / "index.faiss"))
    chunks = [json.loads(line) for line in (bundle.index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    params = xllamacpp.CommonParams()
    params.model.path = str(packaged_gguf(next(iter(PACKAGED_GGUF))))
    params.n_parallel, params.n_ctx = slots, slots * 2048
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    prompt = load_prompt(bundle.spec.get("prompt_version", "rag.v1"))
    suffix = Guardrails().system_suffix()
    retrieval = Lock()  # one retrieval at a time, on one thread, as in ours

    def answer(question: str, k: int, max_new_tokens: int) -> dict:
        with retrieval:
            text, found = _rag_prompt(embedder, index, chunks, prompt, suffix, tokenizer, question, k)
        out = server.handle_completions({"prompt": text, "n_predict": max_new_tokens, "temperature": 0, "cache_prompt": True})
        if "choices" not in out:
            raise RuntimeError(f"llama.cpp: {str(out)[:300]}")
        return {"answer": out["choices"][0]["text"].strip(), "chunks": [{"chunk_id": c["chunk_id"]} for c in found]}

    _serve_http(port, answer, ThreadingHTTPServer)


def _serve_http(port: int, answer, server_class) -> None:
    from http.server import BaseHTTPRequestHandler

    import torch

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200 if self.path == "/readyz" else 404, {})

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with torch.inference_mode():
                    self._send(200, answer(body["question"], int(body.get("k", K)), int(body.get("max_new_tokens", 64))))
            except Exception as err:  # noqa: BLE001 - the client counts it as an error
                self._send(500, {"error": repr(err)})

    # The default backlog of 5 would make queued clients wait on TCP SYN retries, a
    # penalty of the kernel, not of the server under test.
    server_class.request_queue_size = 128
    server_class(("127.0.0.1", port), Handler).serve_forever()


def post(port: int, body: dict) -> tuple[int, dict | str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/answer", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    except OSError as err:
        status, text = 0, repr(err)
    seconds = time.perf_counter() - start
    try:
        return status, (json.loads(text) if status == 200 else text), seconds
    except json.JSONDecodeError:
        return -1, text, seconds


def start(side: str, bundle, work: Path, port: int, args) -> subprocess.Popen:
    log = (work / f"{side}.log").open("wb")
    if side.startswith("ours"):
        env = {**os.environ, "DRIFTLOOP_BUNDLE": str(bundle.folder), "DRIFTLOOP_HOME": str(work), "BENTOML_HOME": str(work / "bentoml")}
        env.pop("DRIFTLOOP_API_KEY", None)
        if side == "ours-no-reuse":
            env["DRIFTLOOP_PREFIX_CACHE_MB"] = "0"
        if side == "ours-cache":
            env["DRIFTLOOP_SEMANTIC_CACHE_THRESHOLD"] = "0.97"
        if side == "ours-llamacpp":
            env["DRIFTLOOP_MAX_BATCH"] = str(args.slots)  # one batch fills llama.cpp's slots, as the llamacpp side's server has
        command = [str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:DriftloopRAG", "--host", "127.0.0.1", "--port", str(port)]
    elif side == "llamacpp":
        env = dict(os.environ)
        command = [sys.executable, __file__, "--serve-llamacpp", str(bundle.folder), "--port", str(port), "--slots", str(args.slots),
                   "--threads", str(args.threads)]
    else:
        env = dict(os.environ)
        command = [sys.executable, __file__, "--serve-baseline", str(bundle.folder), "--port", str(port)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 600) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"server not ready after {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def generate_batches(port: int) -> tuple[float, float] | None:
    """(requests, batches) through the service's batched generate so far; None for the baseline."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return None
    totals = {}
    for line in lines:
        if line.startswith("driftloop_generate_batch_size_") and not line.startswith("driftloop_generate_batch_size_bucket"):
            kind = line.split("{")[0].split(" ")[0].rsplit("_", 1)[1]
            totals[kind] = totals.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return (totals["sum"], totals["count"]) if "sum" in totals and "count" in totals else None


def run_level(port: int, questions: list[str], clients: int, n: int, max_new_tokens: int, offset: int = 0) -> dict:
    import numpy as np

    bodies = [{"question": questions[(offset + i) % len(questions)], "k": K, "max_new_tokens": max_new_tokens} for i in range(n)]
    before = generate_batches(port)
    start_at = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda body: post(port, body), bodies))
    wall = time.perf_counter() - start_at
    after = generate_batches(port)
    mean_batch = round((after[0] - before[0]) / (after[1] - before[1]), 2) if before and after and after[1] > before[1] else None
    ok = [r for r in results if r[0] == 200]
    latencies = np.array([r[2] for r in ok]) if ok else np.array([float("nan")])
    errors = [f"{status}: {str(body)[:300]}" for status, body, _ in results if status != 200]
    hits = [seconds for status, body, seconds in results if status == 200 and isinstance(body, dict) and body.get("cache")]
    return {"cache_hits": len(hits), "hit_p50_s": round(float(np.percentile(hits, 50)), 4) if hits else None,"clients": clients, "requests": n, "ok": len(ok), "errors": len(errors), "error_samples": errors[:3], "wall_s": round(wall, 2),
            "rps": round(len(ok) / wall, 3), "mean_generate_batch": mean_batch,
            "p50_s": round(float(np.percentile(latencies, 50)), 3), "p99_s": round(float(np.percentile(latencies, 99)), 3),
            "answers": [b["answer"] if s == 200 and isinstance(b.get("answer"), str) else None for s, b, _ in results],
            "chunk_ids": [[c["chunk_id"] for c in b["chunks"]] if s == 200 else None for s, b, _ in results]}


def time_to_first_token(port: int, questions: list[str], n: int, max_new_tokens: int) -> dict:
    """Streamed chat requests through the official openai client, one at a time: seconds
    from sending to the first content delta, and to the last."""
    import numpy as np
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    first, whole = [], []
    for i in range(n):
        started, seen = time.perf_counter(), None
        stream = client.chat.completions.create(model="driftloop", messages=[{"role": "user", "content": questions[(20_000 + i) % len(questions)]}],
                                                max_tokens=max_new_tokens, temperature=0, stream=True)
        for chunk in stream:
            if seen is None and chunk.choices and chunk.choices[0].delta.content:
                seen = time.perf_counter() - started
        whole.append(time.perf_counter() - started)
        if seen is not None:
            first.append(seen)
    return {"requests": n, "with_text": len(first), "ttft_p50_s": round(float(np.median(first)), 3) if first else None,
            "total_p50_s": round(float(np.median(whole)), 3)}


def run_side(side: str, bundle, work: Path, questions: list[str], args) -> dict:
    from driftloop.serving.supervisor.processes import free_port

    port = free_port()
    proc = start(side, bundle, work, port, args)
    try:
        ready_s = wait_ready(proc, port, work / f"{side}.log")
        # The same warm-up for both sides, one client at a time: first calls build kernels
        # and fill allocator pools, which is start-up, not serving.
        warm = [run_level(port, questions, 1, args.warmup, args.max_new_tokens, offset=10_000)]
        levels = [run_level(port, questions, c, n, args.max_new_tokens) for c, n in zip(args.clients, args.requests, strict=True)]
        ttft = time_to_first_token(port, questions, args.stream_requests, args.max_new_tokens) if side.startswith("ours") else None
    finally:
        stop(proc)
    warm_errors = [e for w in warm for e in w["error_samples"]]
    return {"side": side, "ready_s": round(ready_s, 1), "warmup_errors": warm_errors, "levels": levels, "ttft": ttft}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 32, 32], help="requests per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--docs", type=int, default=60, help="documents of the default corpus in the index, evenly spread")
    parser.add_argument("--warmup", type=int, default=12, help="warm-up requests, one client")
    parser.add_argument("--no-adapter", action="store_true", help="serve the base model alone")
    parser.add_argument("--max-batch", type=int, default=None, help="DRIFTLOOP_MAX_BATCH for ours (the service's default: 8)")
    parser.add_argument("--sides", nargs="+", default=list(LABELS), choices=list(LABELS), help="servers to measure, in this order")
    parser.add_argument("--stream-requests", type=int, default=8, help="streamed chat requests, one client, for time to first token")
    parser.add_argument("--slots", type=int, default=16, help="llama.cpp's parallel slots")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp's threads (default: the physical cores)")
    parser.add_argument("--serve-baseline", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--serve-llamacpp", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from common import machine, physical_cores

    args.threads = args.threads or physical_cores()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.port)
        return
    if args.serve_llamacpp:
        serve_llamacpp(args.serve_llamacpp, args.port, args.slots, args.threads)
        return
    if len(args.requests) != len(args.clients):
        parser.error("--requests needs one count per --clients level")
    if args.max_batch:
        os.environ["DRIFTLOOP_MAX_BATCH"] = str(args.max_batch)
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-serving-"))
    try:
        bundles, questions, n_chunks = build_bundle_for_bench(work, args.docs, not args.no_adapter,
                                                              ("transformers", "llamacpp") if "ours-llamacpp" in args.sides else ("transformers",))
        bundle = bundles["transformers"]
        print(f"machine: {machine()}; {args.docs} documents, {n_chunks} chunks, {len(questions)} questions; model {bundle.model_version}; "
              f"max_new_tokens {args.max_new_tokens}; DRIFTLOOP_MAX_BATCH {os.environ.get('DRIFTLOOP_MAX_BATCH', '8 (default)')}", flush=True)
        sides = {side: run_side(side, bundles["llamacpp" if side == "ours-llamacpp" else "transformers"], work, questions, args)
                 for side in args.sides}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| server | clients | requests | errors | req/s | p50 s | p99 s | mean generate batch | cache hits (p50 s) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for side, result in sides.items():
        for level in result["levels"]:
            hits = f"{level['cache_hits']} ({level['hit_p50_s']})" if level["cache_hits"] else "0"
            print(f"| {LABELS[side]} | {level['clients']} | {level['requests']} | {level['errors']} | {level['rps']:.3f} | {level['p50_s']:.2f} | "
                  f"{level['p99_s']:.2f} | {level['mean_generate_batch'] or 'n/a'} | {hits} |")
    for side, result in sides.items():
        print(f"{side}: ready after {result['ready_s']} s; warm-up errors: {len(result['warmup_errors'])}")
        for sample in result["warmup_errors"][:3]:
            print(f"  {side} warm-up error: {sample}")
        for level in result["levels"]:
            for sample in level["error_samples"]:
                print(f"  {side} error at {level['clients']} clients: {sample}")
    for side, result in sides.items():
        if result["ttft"]:
            print(f"{side}: streamed chat through the openai client, one client: time to first token p50 {result['ttft']['ttft_p50_s']} s, "
                  f"whole reply p50 {result['ttft']['total_p50_s']} s ({result['ttft']['with_text']}/{result['ttft']['requests']} with text)")
    # The cache side is ours too, on repeats by construction: never the reference of the RESULT line.
    reference = "llamacpp" if "llamacpp" in sides else next((side for side in sides if side not in ("ours", "ours-cache")), None)
    if reference is None or "ours" not in sides:
        return  # nothing to compare with: the figures above are the run's result
    for base_level, our_level in zip(sides[reference]["levels"], sides["ours"]["levels"], strict=True):
        pairs = [(a, b) for a, b in zip(base_level["answers"], our_level["answers"], strict=True) if a is not None and b is not None]
        same_chunks = sum(a == b for a, b in zip(base_level["chunk_ids"], our_level["chunk_ids"], strict=True) if a is not None)
        shape = all(isinstance(a, str) for pair in pairs for a in pair)
        print(f"{base_level['clients']} clients, ours against {reference}: both return text: {shape}; identical answers "
              f"{sum(a == b for a, b in pairs)}/{len(pairs)}, identical chunks {same_chunks}/{len(pairs)}; empty answers ours "
              f"{sum(not b for _, b in pairs)}, {reference} {sum(not a for a, _ in pairs)}")
    figures = {side: {"ready_s": r["ready_s"], "ttft": r["ttft"], "levels": [{k: v for k, v in lv.items() if k not in ("answers", "chunk_ids")}
                                                          for lv in r["levels"]]} for side, r in sides.items()}
    print("JSON " + json.dumps(figures))
    failed = sum(lv["errors"] for lv in sides["ours"]["levels"]) + len(sides["ours"]["warmup_errors"])
    for level in sides["ours"]["levels"]:
        others = ", ".join(f"{side} {next(lv for lv in sides[side]['levels'] if lv['clients'] == level['clients'])['rps']:.3f} req/s "
                           f"(p99 {next(lv for lv in sides[side]['levels'] if lv['clients'] == level['clients'])['p99_s']:.2f} s)"
                           for side in sides if side != "ours")
        print(f"{level['clients']} clients: ours {level['rps']:.3f} req/s (p99 {level['p99_s']:.2f} s); {others}")
    print(f"our failed requests: {failed}; wall time {time.perf_counter() - began:.0f} s")
    top = max(args.clients)
    ours = next(lv for lv in sides["ours"]["levels"] if lv["clients"] == top)
    base = next(lv for lv in sides[reference]["levels"] if lv["clients"] == top)
    print(f"RESULT rps_at_{top}={ours['rps']:.3f} baseline={base['rps']:.3f} ratio={ours['rps'] / base['rps']:.2f}")

if __name__ == "__main__":
    main()
