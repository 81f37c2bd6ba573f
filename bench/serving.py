"""Serving throughput and latency: the BentoML service against a naive HTTP baseline.

Ours: `bentoml serve bento.service:DriftloopRAG` (its event-driven batcher, up to
DRIFTLOOP_MAX_BATCH requests per generate batch) on a bundle of the real default models
(SmolLM2-135M-Instruct, all-MiniLM-L6-v2), a FAISS index over --docs documents spread
over the default corpus, and a freshly initialised LoRA adapter (r=8 on q/k/v/o; B is zero
at init, so answers equal the base model's, but the served path runs the adapter).
Baseline: a stdlib `http.server.HTTPServer` (one request at a time) doing the same work
per POST /answer: the same embedding model through plain sentence-transformers, the
same index (k=3), the same prompt (rag.v1 plus the service's guardrail suffix) and
greedy generation through `transformers.pipeline("text-generation")` with that adapter
merged into the weights. Both sides: the same questions (eval questions of those
documents), the same max_new_tokens, the same warm-up, run one after the other. Answers
are compared word for word; some differ because the guardrail canary in the system
prompt is random per process.

Each concurrency level sends --requests requests from that many client threads
(closed loop); throughput is completed requests over wall time, latency is per request
as the client sees it. Any non-200 answer is counted and printed.

    .venv/bin/python bench/serving.py [--clients 1 4 16] [--requests 16 32 32] [--max-new-tokens 32] [--docs 60]
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


def build_bundle_for_bench(work: Path, docs_limit: int, adapter: bool):
    """A serving bundle as the pipeline builds one, and the questions to ask it."""
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
    bundle = build_bundle(work / "bundles", base_model={"name": base.name, "path": base.path, "version": base.version}, adapter=adapter_path,
                          adapter_version=adapter_version, index_folder=index_folder, embedding_model="all-MiniLM-L6-v2", prompt_version="rag.v1",
                          settings={"embedding_precision": "auto", "max_input_chars": 4000, "max_input_tokens": 1024})
    questions = [q["question"] for q in eval_questions(docs, 5000) if q["doc_id"] in kept]
    return bundle, questions, len(chunks)


def serve_baseline(bundle_dir: str, port: int) -> None:
    """The naive server: everything in one process, one request at a time."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import faiss
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

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
    generator = pipeline("text-generation", model=model.eval(), tokenizer=tokenizer, device="cpu")
    prompt = load_prompt(bundle.spec.get("prompt_version", "rag.v1"))
    suffix = Guardrails().system_suffix()  # ours adds it to every prompt; same length here

    def answer(question: str, k: int, max_new_tokens: int) -> dict:
        vector = embedder.encode([question], normalize_embeddings=True, convert_to_numpy=True)
        _, ids = index.search(vector.astype("float32"), k)
        found = [chunks[int(i)] for i in ids[0] if int(i) >= 0]
        messages = prompt.messages(question, "\n\n".join(c["text"] for c in found)[:2000])
        messages[0] = {**messages[0], "content": messages[0]["content"] + suffix}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out = generator(text, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
        return {"answer": out[0]["generated_text"].strip(), "chunks": [{"chunk_id": c["chunk_id"]} for c in found]}

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
    # penalty of the kernel, not of serving one request at a time.
    HTTPServer.request_queue_size = 128
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


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


def start(side: str, bundle, work: Path, port: int) -> subprocess.Popen:
    log = (work / f"{side}.log").open("wb")
    if side == "ours":
        env = {**os.environ, "DRIFTLOOP_BUNDLE": str(bundle.folder), "DRIFTLOOP_HOME": str(work), "BENTOML_HOME": str(work / "bentoml")}
        env.pop("DRIFTLOOP_API_KEY", None)
        command = [str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:DriftloopRAG", "--host", "127.0.0.1", "--port", str(port)]
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
    return {"clients": clients, "requests": n, "ok": len(ok), "errors": len(errors), "error_samples": errors[:3], "wall_s": round(wall, 2),
            "rps": round(len(ok) / wall, 3), "mean_generate_batch": mean_batch,
            "p50_s": round(float(np.percentile(latencies, 50)), 3), "p99_s": round(float(np.percentile(latencies, 99)), 3),
            "answers": [b["answer"] if s == 200 and isinstance(b.get("answer"), str) else None for s, b, _ in results],
            "chunk_ids": [[c["chunk_id"] for c in b["chunks"]] if s == 200 else None for s, b, _ in results]}


def run_side(side: str, bundle, work: Path, questions: list[str], args) -> dict:
    from driftloop.serving.supervisor.processes import free_port

    port = free_port()
    proc = start(side, bundle, work, port)
    try:
        ready_s = wait_ready(proc, port, work / f"{side}.log")
        # The same warm-up for both sides, one client at a time: first calls build kernels
        # and fill allocator pools, which is start-up, not serving.
        warm = [run_level(port, questions, 1, args.warmup, args.max_new_tokens, offset=10_000)]
        levels = [run_level(port, questions, c, n, args.max_new_tokens) for c, n in zip(args.clients, args.requests, strict=True)]
    finally:
        stop(proc)
    warm_errors = [e for w in warm for e in w["error_samples"]]
    return {"side": side, "ready_s": round(ready_s, 1), "warmup_errors": warm_errors, "levels": levels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 32, 32], help="requests per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--docs", type=int, default=60, help="documents of the default corpus in the index, evenly spread")
    parser.add_argument("--warmup", type=int, default=12, help="warm-up requests, one client")
    parser.add_argument("--no-adapter", action="store_true", help="serve the base model alone")
    parser.add_argument("--max-batch", type=int, default=None, help="DRIFTLOOP_MAX_BATCH for ours (the service's default: 8)")
    parser.add_argument("--serve-baseline", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.port)
        return
    if len(args.requests) != len(args.clients):
        parser.error("--requests needs one count per --clients level")
    if args.max_batch:
        os.environ["DRIFTLOOP_MAX_BATCH"] = str(args.max_batch)
    from common import machine

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-serving-"))
    try:
        bundle, questions, n_chunks = build_bundle_for_bench(work, args.docs, not args.no_adapter)
        print(f"machine: {machine()}; {args.docs} documents, {n_chunks} chunks, {len(questions)} questions; model {bundle.model_version}; "
              f"max_new_tokens {args.max_new_tokens}; DRIFTLOOP_MAX_BATCH {os.environ.get('DRIFTLOOP_MAX_BATCH', '8 (default)')}", flush=True)
        sides = {side: run_side(side, bundle, work, questions, args) for side in ("baseline", "ours")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    labels = {"baseline": "baseline: HTTPServer + pipeline", "ours": "driftloop (BentoML, event-driven batching)"}
    print("\n| server | clients | requests | errors | req/s | p50 s | p99 s | mean generate batch |\n|---|---|---|---|---|---|---|---|")
    for side, result in sides.items():
        for level in result["levels"]:
            print(f"| {labels[side]} | {level['clients']} | {level['requests']} | {level['errors']} | {level['rps']:.3f} | {level['p50_s']:.2f} | "
                  f"{level['p99_s']:.2f} | {'1' if side == 'baseline' else level['mean_generate_batch'] or 'n/a'} |")
    for side, result in sides.items():
        print(f"{side}: ready after {result['ready_s']} s; warm-up errors: {len(result['warmup_errors'])}")
        for sample in result["warmup_errors"][:3]:
            print(f"  {side} warm-up error: {sample}")
        for level in result["levels"]:
            for sample in level["error_samples"]:
                print(f"  {side} error at {level['clients']} clients: {sample}")
    for base_level, our_level in zip(sides["baseline"]["levels"], sides["ours"]["levels"], strict=True):
        pairs = [(a, b) for a, b in zip(base_level["answers"], our_level["answers"], strict=True) if a is not None and b is not None]
        same_chunks = sum(a == b for a, b in zip(base_level["chunk_ids"], our_level["chunk_ids"], strict=True) if a is not None)
        shape = all(isinstance(a, str) for pair in pairs for a in pair)
        print(f"{base_level['clients']} clients: both return text: {shape}; identical answers {sum(a == b for a, b in pairs)}/{len(pairs)}, "
              f"identical chunks {same_chunks}/{len(pairs)}; empty answers ours {sum(not b for _, b in pairs)}, "
              f"baseline {sum(not a for a, _ in pairs)}")
    figures = {side: {"ready_s": r["ready_s"], "levels": [{k: v for k, v in lv.items() if k not in ("answers", "chunk_ids")}
                                                          for lv in r["levels"]]} for side, r in sides.items()}
    print("JSON " + json.dumps(figures))
    top = max(args.clients)
    ours = next(lv for lv in sides["ours"]["levels"] if lv["clients"] == top)
    base = next(lv for lv in sides["baseline"]["levels"] if lv["clients"] == top)
    failed = sum(lv["errors"] for lv in sides["ours"]["levels"]) + len(sides["ours"]["warmup_errors"])
    verdict = "no worse" if ours["p99_s"] <= base["p99_s"] else "WORSE"
    print(f"p99 at {top} clients: ours {ours['p99_s']:.2f} s, baseline {base['p99_s']:.2f} s: {verdict}; "
          f"our failed requests: {failed}; wall time {time.perf_counter() - began:.0f} s")
    print(f"RESULT rps_at_{top}={ours['rps']:.3f} baseline={base['rps']:.3f} ratio={ours['rps'] / base['rps']:.2f}")


if __name__ == "__main__":
    main()
