"""The driftloop inference service: RAG answers with cited chunks, an OpenAI-compatible
chat API, feedback, health and Prometheus metrics (energy per 1,000 requests included).

Two BentoML services: `Models` holds the generator (base model + champion adapter)
behind a batchable API, so concurrent requests are batched adaptively; `DriftloopRAG`
is the public face (guardrails, retrieval with the embedding model and the index, the
request log, API keys) and calls `Models` through a dependency. It serves the bundle in
DRIFTLOOP_BUNDLE, or the one packed beside this file when built as a bento.

BentoML imports this module only to start the service, and its decorators need the
service's resources and admission limit when the classes are declared: so the service's
settings are read here, once, into `SETTINGS` (driftloop/settings.py), for every part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.routing import Route

from driftloop.offline import enforce_offline

enforce_offline()

from driftloop.prompts import CONTEXT_CHUNKS, join_contexts, load_prompt  # noqa: E402 - offline switches first
from driftloop.serving.auth import ApiKeyMiddleware  # noqa: E402
from driftloop.serving.endpoints import embeddings, list_models  # noqa: E402
from driftloop.serving.energy_metrics import EnergyAccount  # noqa: E402
from driftloop.routing import OUT_OF_SCOPE_REPLY, Router  # noqa: E402
from driftloop.serving.metrics import batch_size, blocks_total, cache_total, errors_total, latency_hist, routes_total, tokens_total  # noqa: E402
from driftloop.serving.openai_chat import chat_completions  # noqa: E402
from driftloop.serving.semantic_cache import SemanticCache, answer_key, cacheable, served_from  # noqa: E402
from driftloop.serving.batcher import Batcher, QueueFull  # noqa: E402
from driftloop.serving.bundle import load_bundle  # noqa: E402
from driftloop.serving.chat import ChatRequest, Sampling, compose  # noqa: E402
from driftloop.serving.guardrails import GuardrailSettings, Guardrails, GuardrailViolation  # noqa: E402
from driftloop.serving.requestlog import RequestLog, default_root, new_request_id  # noqa: E402
from driftloop.serving.shadow import AdapterShadow, request_id_from  # noqa: E402
from driftloop.serving.stream import LineReader, Released, TextDeltas, encode_event  # noqa: E402
from driftloop.serving.traffic import release_request_timers  # noqa: E402
from driftloop.settings import ServiceSettings  # noqa: E402

release_request_timers()
SETTINGS = ServiceSettings.from_env()

# The longest prompt a chat request may build, whatever the model's own window: history
# past it is dropped, oldest first; on CPU every prompt token is paid for on each request.
MAX_CONTEXT_TOKENS = 4096


def _bundle_dir() -> Path:
    return Path(SETTINGS.bundle or Path(__file__).resolve().parent / "bundle")


def _device() -> str:
    from driftloop.models.hardware import resolve_device

    return resolve_device(SETTINGS.serve_device)


def _resources() -> dict:
    return {"gpu": SETTINGS.serve_gpus} if SETTINGS.serve_gpus else {"cpu": str(SETTINGS.serve_cpus)}




class Overloaded(GuardrailViolation):
    """The models service is at capacity: a 503 the client may retry, not an error of ours."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, "overloaded", f"the model server is at capacity, retry shortly ({detail})")


@bentoml.service(name="driftloop-models", resources=_resources(), traffic={"timeout": 300})
class Models:
    """The generator alone, on one thread of its own that loads it and runs every batch.

    Its process owns the cores, so that one thread's intra-op pool is the only one
    computing there. Torch ops from a second thread start a second OpenMP team that
    competes for the same cores: with retrieval in a thread here, generation ran 1.5x to
    1.7x slower; with the model loaded on the main thread and batches run on BentoML's
    worker threads, a batch of 8 decoded 25% slower than on the thread that loaded it
    (probes on 2 cores). Batching is `Batcher`'s, driven by events, not BentoML's
    polling dispatcher (driftloop/serving/batcher.py says why)."""

    def __init__(self) -> None:
        from driftloop.serving.engine import Generation

        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.generation = self._lane.submit(lambda: Generation(load_bundle(_bundle_dir()), _device(), SETTINGS.serve_precision,
                                                                           SETTINGS.prefix_cache_mb, SETTINGS.max_batch)).result()
        # llama.cpp and vLLM schedule their own slots: each request goes in as it comes, from
        # threads of its own (no torch runs there), instead of waiting for a whole batch.
        slots = SETTINGS.max_batch if self.generation.engine != "transformers" else 1
        self._reported, self._count = 0, threading.Lock()
        self.energy = EnergyAccount()
        self.batcher = Batcher(self._generate, self._lane if slots == 1 else ThreadPoolExecutor(slots, thread_name_prefix="slot"),
                               max_batch=1 if slots > 1 else SETTINGS.max_batch, max_queue=SETTINGS.max_queue,
                               max_wait_s=SETTINGS.max_queue_wait_s, window_s=SETTINGS.batch_window_ms / 1000, concurrency=slots,
                               key=lambda request: (Sampling.from_dict(request[2]).key(), request[4]), priority=lambda request: request[4] != "primary")

    @bentoml.api
    async def generate(self, prompt: str, max_new_tokens: int = 64, sampling: dict | None = None, adapter: str = "primary") -> dict:
        """`sampling`: temperature, top_p, seed and stop as the chat API takes them; greedy when absent.
        `adapter`: primary (the champion) or shadow (the bundle's shadow adapter, after every client request)."""
        try:
            return await self.batcher.submit((prompt, max_new_tokens, sampling, None, adapter))
        except QueueFull as err:
            raise bentoml.exceptions.ServiceUnavailable(f"generation queue: {err}") from None

    @bentoml.api
    async def generate_stream(self, prompt: str, max_new_tokens: int = 64, sampling: dict | None = None,
                              adapter: str = "primary") -> AsyncGenerator[str, None]:
        """`generate`, streamed: one JSON line per piece of final text ({"text": ...}) as the
        tokens are decoded, in the same batches as every other request, then one line with
        the counts ({"done": true, ...}). The pieces add up to what `generate` returns."""
        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
        deltas = TextDeltas(lambda ids: self.generation.answerer.tokenizer.decode(ids, skip_special_tokens=True),
                            Sampling.from_dict(sampling).stop, max_new_tokens)

        def sink(token: int) -> None:  # on the generate thread
            piece = deltas.push(token)
            if piece:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        job = asyncio.ensure_future(self.batcher.submit((prompt, max_new_tokens, sampling, sink, adapter)))
        while True:
            waiter = asyncio.ensure_future(pieces.get())
            await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                yield encode_event({"text": waiter.result()})
                continue
            waiter.cancel()
            break
        while not pieces.empty():
            yield encode_event({"text": pieces.get_nowait()})
        try:
            result = job.result()
        except QueueFull as err:
            raise bentoml.exceptions.ServiceUnavailable(f"generation queue: {err}") from None
        tail = deltas.finish()
        if tail:
            yield encode_event({"text": tail})
        yield encode_event({"done": True, "prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                            "stopped": bool(result.get("stopped") or deltas.stopped)})

    def _generate(self, requests: list[tuple[str, int, dict | None, Callable[[int], None] | None, str]]) -> list[dict]:
        longest = max(request[1] for request in requests)
        # The batcher's key put only requests sampled the same way, for one adapter, into this batch.
        sinks = [request[3] for request in requests]
        out = self.generation.generate([request[0] for request in requests], longest, requests[0][2], sinks=sinks if any(sinks) else None,
                                       adapter=requests[0][4])
        batch_size.observe(len(requests))
        with self._count:  # batches may run side by side: count each reused token once
            self.energy.served(sum(request[4] == "primary" for request in requests))
            total = self.generation.reused_tokens()
            tokens_total.labels(kind="prompt_reused").inc(total - self._reported)
            self._reported = total
        # One batch decodes to its longest request; each answer is cut to what it asked for.
        tokenizer = self.generation.answerer.tokenizer
        for result, (_, limit, *_) in zip(out, requests, strict=True):
            if result["completion_tokens"] > limit:
                result["text"] = tokenizer.decode(tokenizer(result["text"], add_special_tokens=False)["input_ids"][:limit], skip_special_tokens=True).strip()
                result["completion_tokens"] = limit
        return out

    @bentoml.api
    def count_tokens(self, text: str) -> int:
        return self.generation.count_tokens(text)


openai_app = Starlette(routes=[Route("/models", list_models, methods=["GET"]), Route("/chat/completions", chat_completions, methods=["POST"]),
                                Route("/embeddings", embeddings, methods=["POST"])])


@bentoml.service(name="driftloop-rag", traffic={"timeout": 300, "max_concurrency": SETTINGS.max_concurrency})
@bentoml.asgi_app(openai_app, path="/v1")
class DriftloopRAG:
    models = bentoml.depends(Models)

    def __init__(self) -> None:
        self.bundle = load_bundle(_bundle_dir())
        self.prompt = load_prompt(self.bundle.spec.get("prompt_version", "rag.v1"))
        settings = self.bundle.spec.get("settings", {})
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.bundle.spec["base_model"]["path"])
        # DRIFTLOOP_CANARY pins the canary (one value across replicas, and a known string to
        # scan logs for); unset, each process draws its own.
        self.guardrails = Guardrails(GuardrailSettings(max_input_chars=int(settings.get("max_input_chars", 4000)),
                                                       max_input_tokens=int(settings.get("max_input_tokens", 1024)),
                                                       canary=SETTINGS.canary),
                                     count_tokens=lambda text: len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        prompt_price, completion_price = SETTINGS.price_per_1k_prompt, SETTINGS.price_per_1k_completion
        self.log = RequestLog(default_root(), settings.get("price_per_1k_prompt", 0.0) if prompt_price is None else prompt_price,
                              settings.get("price_per_1k_completion", 0.0) if completion_price is None else completion_price)
        self.model_names = [self.bundle.model_version, "driftloop"]
        self.embedding_names = [Path(self.bundle.spec["embedding_model"]).name]
        # Retrieval lives here, beside the guardrails, not in the generator's process: a
        # question's embedding and search take milliseconds on one thread, and here they
        # neither queue behind a generate batch nor start a second thread pool beside it.
        import torch

        from driftloop.serving.engine import Retrieval

        torch.set_num_threads(SETTINGS.retrieval_threads)
        self.retrieval = Retrieval(self.bundle, _device(), screen=bool(settings.get("screen_injection", True)),
                                   on_flagged=lambda chunk, verdict: blocks_total.labels(reason="indirect_injection").inc())
        self.guardrails.screen = self.retrieval.screen
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")
        # A shadow answers copies of live requests: logged for comparison, seen by nobody;
        # a bundle's shadow adapter does so from this service's own model.
        self.role = SETTINGS.role
        version = self.bundle.spec.get("shadow_version")
        self.shadow = AdapterShadow(version, lambda **asked: self._models("generate", **asked), self.guardrails.check_output,
                                    self.log.request) if version else None
        self.model_names += [version] if version else []
        threshold = SETTINGS.semantic_cache_threshold
        self.cache = (SemanticCache(threshold, SETTINGS.semantic_cache_entries, SETTINGS.semantic_cache_ttl_s, SETTINGS.semantic_cache_match)
                      if threshold else None)
        self.router = Router.load(self.bundle.folder) if SETTINGS.route == "on" else None
        self.started = int(time.time())

    async def __is_ready__(self) -> bool:
        """Ready only once the models service answers and has been warmed up: BentoML's own
        /readyz would say ready while the dependency is still loading, and a cold service
        (no kernels built yet for its shapes) answers its first requests several times
        slower, so a switch to it would show as a latency spike."""
        if getattr(self, "_models_ready", False):
            return True
        try:
            await self.models.to_async.count_tokens("ready")
        except Exception:  # noqa: BLE001 - any failure means not ready yet
            return False
        warming = getattr(self, "_warming", None)
        if warming is None:
            self._warming = asyncio.ensure_future(self._warm_up(SETTINGS.warmup_requests))
            return False
        if not warming.done():
            return False
        if warming.cancelled() or warming.exception() is not None:
            if not warming.cancelled():
                # Not ready is all a probe sees; the reason goes to the service's log.
                logging.getLogger("driftloop.service").warning("warm-up failed, retrying: %r", warming.exception())
            self._warming = None  # the next probe tries again
            return False
        self._models_ready = True
        return True

    async def _warm_up(self, rounds: int) -> None:
        """Requests of varied length through the models, one at a time and then together,
        so the kernels of single and batched shapes are built before real traffic; straight
        to the models service, so nothing reaches the request log."""
        async def one(n: int) -> None:
            question = "How do I use this? " + "Explain it in detail, step by step. " * n
            chunks = await self._retrieve(question, CONTEXT_CHUNKS)
            await self._models("generate", prompt=self._prompt(question, chunks)[0], max_new_tokens=2)

        for n in range(rounds):
            await one(n)
        if rounds:
            await asyncio.gather(*(one(n) for n in range(min(rounds, 4))))

    async def _models(self, method: str, *args, **kwargs):
        """Call the models service; every call is a pure function of its input, so a
        connection dropped by the dependency (seen right after start-up, when its
        keep-alive connections are recycled) is retried instead of failing the request."""
        import aiohttp

        for attempt in range(3):
            try:
                return await getattr(self.models.to_async, method)(*args, **kwargs)
            except bentoml.exceptions.BentoMLException as err:
                # Its batch queue full (503) or its own limit reached (429): shed load, stay healthy.
                if int(getattr(err, "error_code", 500)) in (429, 503):
                    errors_total.labels(endpoint=f"models.{method}", status="overloaded").inc()
                    raise Overloaded(str(err)[:200]) from None
                raise
            except (aiohttp.ClientError, RuntimeError) as err:
                # aiohttp reports a connection closed under it as a bare RuntimeError.
                if attempt == 2 or (isinstance(err, RuntimeError) and "Connection closed" not in str(err)):
                    raise
                errors_total.labels(endpoint=f"models.{method}", status="retried").inc()

    async def _retrieve(self, question: str, k: int, vector=None) -> list[dict]:
        def search() -> list[dict]:
            return self.retrieval.search([question], k, vector)[0]

        return await asyncio.get_running_loop().run_in_executor(self._lane, search)

    async def _cached(self, question: str, key: tuple | None) -> tuple:
        """The question's embedding and the cache's answer for it, when the request may be cached."""
        if key is None:
            return None, None
        hit = self.cache.repeat(key, question)
        vector = None if hit else await asyncio.get_running_loop().run_in_executor(self._lane, self.retrieval.embed, [question])
        hit = hit or self.cache.get(key, vector[0], question)
        cache_total.labels(result="hit" if hit else "miss").inc()
        return vector, hit

    def _template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prompt(self, question: str, chunks: list[dict], chat: ChatRequest | None = None, max_new_tokens: int = 0) -> tuple[str, int]:
        """The prompt, and how many history turns were left out to fit the context."""
        context = join_contexts([c["text"] for c in chunks])
        messages = self.prompt.messages(question, context)
        messages[0] = {**messages[0], "content": messages[0]["content"] + self.guardrails.system_suffix()}
        if chat is None:
            return self._template(messages), 0
        budget = min(self.tokenizer.model_max_length, MAX_CONTEXT_TOKENS) - max_new_tokens
        messages, dropped = compose(messages, chat, lambda turns: len(self.tokenizer(self._template(turns), add_special_tokens=False)["input_ids"]), budget)
        return self._template(messages), dropped

    async def _ground(self, question: str, k: int, max_new_tokens: int, endpoint: str, request_id: str | None,
                      chat: ChatRequest | None) -> dict:
        """Everything before generation: the input guardrails, retrieval and the prompt. A
        blocked request is logged here, with its reason, and raised."""
        started = time.perf_counter()
        request_id = request_id or new_request_id()
        sampling = chat.sampling if chat else Sampling()
        logged = {"system": list(chat.system), "history": list(chat.history), "sampling": sampling.to_dict()} if chat else None
        try:
            self.guardrails.check_input(question)
            for turn in chat.history if chat else ():
                if turn["role"] == "user":
                    self.guardrails.check_input(turn["content"], field="history")
            # A chat request naming the shadow's version is answered by the shadow adapter itself, never from the cache.
            adapter = "shadow" if chat is not None and self.shadow is not None and chat.model == self.shadow.version else "primary"
            cached = self.cache is not None and cacheable(chat) and adapter == "primary"
            key = answer_key(self.bundle.spec, self.bundle.model_version, k, max_new_tokens, endpoint) if cached else None
            vector, hit = await self._cached(question, key)
            routed = self.router is not None and cacheable(chat) and adapter == "primary" and not hit
            if routed and vector is None:
                vector = await asyncio.get_running_loop().run_in_executor(self._lane, self.retrieval.embed, [question])
            # The router reads as many chunks as it was trained on, whatever k the client asked for.
            chunks = [] if hit else await self._retrieve(question, max(k, self.router.k) if routed else k, vector)
            route = self.router.route(question, vector[0], chunks) if routed else None
            chunks = chunks[:k]
            generated = route is None or route.path == "rag"
            prompt, dropped = self._prompt(question, chunks, chat, max_new_tokens) if generated and not hit else ("", 0)
        except GuardrailViolation as err:
            self._log_blocked(err, request_id, endpoint, question, started, logged)
            raise
        if logged is not None:
            logged["dropped_turns"] = dropped
        return {"request_id": request_id, "started": started, "question": question, "endpoint": endpoint, "chunks": chunks, "prompt": prompt,
                "max_new_tokens": max_new_tokens, "sampling": None if chat is None else sampling.to_dict(), "logged": logged, "adapter": adapter,
                "cache": (key, vector, hit), "route": route}

    def _log_blocked(self, err: GuardrailViolation, request_id: str, endpoint: str, question: str, started: float, logged: dict | None) -> None:
        if not isinstance(err, Overloaded):
            blocks_total.labels(reason=err.code).inc()
        self.log.request(request_id=request_id, endpoint=endpoint, question=question, answer="", model_version=self.bundle.model_version,
                         latency_s=time.perf_counter() - started, prompt_tokens=0, completion_tokens=0, chunk_ids=[],
                         status=err.status, guardrail=None if isinstance(err, Overloaded) else err.code, role=self.role, chat=logged)

    def _finish(self, grounded: dict, answer: str, reason: str | None, generated: dict) -> dict:
        """Log and count one answered request; `reason` is the output guardrail's, if any."""
        if reason:
            blocks_total.labels(reason=reason).inc()
            answer = "I can't share that answer."
        limit = grounded["max_new_tokens"]
        finish = "stop" if generated.get("stopped") else "length" if generated["completion_tokens"] >= limit else "stop"
        tokens_total.labels(kind="prompt").inc(generated["prompt_tokens"])
        tokens_total.labels(kind="completion").inc(generated["completion_tokens"])
        latency = time.perf_counter() - grounded["started"]
        chunks, primary = grounded["chunks"], grounded["adapter"] == "primary"
        version = self.bundle.model_version if primary else self.shadow.version
        self.log.request(request_id=grounded["request_id"], endpoint=grounded["endpoint"], question=grounded["question"], answer=answer,
                         model_version=version, latency_s=latency, prompt_tokens=generated["prompt_tokens"],
                         completion_tokens=generated["completion_tokens"], chunk_ids=[c["chunk_id"] for c in chunks],
                         scores=[c["score"] for c in chunks], guardrail=reason, role=self.role, chat=grounded["logged"],
                         route=grounded["route"].to_dict() if grounded.get("route") else None)
        if self.shadow is not None and primary and grounded["prompt"]:
            self.shadow.submit(grounded)
        return {"request_id": grounded["request_id"], "answer": answer, "chunks": chunks, "model_version": version,
                "prompt_tokens": generated["prompt_tokens"], "completion_tokens": generated["completion_tokens"],
                "latency_s": latency, "finish_reason": "content_filter" if reason else finish, "guardrail": reason,
                "route": grounded["route"].path if grounded.get("route") else "rag"}

    async def rag(self, question: str, k: int, max_new_tokens: int, endpoint: str, request_id: str | None = None,
                  chat: ChatRequest | None = None) -> dict:
        """One grounded answer. A chat request brings the client's system messages, its
        history and its sampling; the question (its last user turn) is what retrieval searches."""
        grounded = await self._ground(question, k, max_new_tokens, endpoint, request_id, chat)
        key, vector, hit = grounded["cache"]
        route = grounded["route"]
        if route is not None:
            routes_total.labels(path=route.path).inc()
        if route is not None and route.path != "rag":
            # No generation: the top chunk's passage, or the polite refusal citing nothing.
            text = route.passage if route.path == "extractive" else OUT_OF_SCOPE_REPLY
            grounded["chunks"] = grounded["chunks"][:1] if route.path == "extractive" else []
            return self._finish(grounded, text, self.guardrails.check_output(text), {"text": text, "prompt_tokens": 0,
                                                                                    "completion_tokens": 0, "stopped": True})
        if hit is not None:
            result = served_from(hit, grounded["request_id"], time.perf_counter() - grounded["started"])
            self.log.request(request_id=result["request_id"], endpoint=endpoint, question=question, answer=result["answer"],
                             model_version=result["model_version"], latency_s=result["latency_s"], prompt_tokens=0, completion_tokens=0,
                             chunk_ids=[c["chunk_id"] for c in result["chunks"]], scores=[c["score"] for c in result["chunks"]],
                             role=self.role, chat=grounded["logged"], cache=result["cache"])
            return result
        try:
            generated = await self._models("generate", prompt=grounded["prompt"], max_new_tokens=max_new_tokens, sampling=grounded["sampling"],
                                           adapter=grounded["adapter"])
        except GuardrailViolation as err:
            self._log_blocked(err, grounded["request_id"], endpoint, question, grounded["started"], grounded["logged"])
            raise
        result = self._finish(grounded, generated["text"], self.guardrails.check_output(generated["text"]), generated)
        if key is not None and not result["guardrail"]:
            self.cache.put(key, vector[0], {name: result[name] for name in ("answer", "chunks", "model_version", "finish_reason", "guardrail")},
                           result["request_id"], question)
        return result

    async def rag_stream(self, grounded: dict) -> AsyncGenerator[tuple[str, dict | None], None]:
        """The answer as the models service generates it: (text, None) for each piece that
        passed the output guardrails, then ("", result) once, the result `rag` returns.
        A piece is released only after the whole answer up to it is checked, and the last
        few characters wait for the next piece, so a secret split across two pieces is seen
        whole; a failed check ends the stream with finish_reason content_filter."""
        released = Released(self.guardrails.check_output, hold=self.guardrails.output_hold())
        reader, generated = LineReader(), None
        stream = self.models.to_async.generate_stream(prompt=grounded["prompt"], max_new_tokens=grounded["max_new_tokens"], sampling=grounded["sampling"],
                                                      adapter=grounded["adapter"])
        async for piece in stream:
            for event in reader.feed(piece):
                if event.get("done"):
                    generated = event
                    continue
                out = released.add(event["text"])
                if out:
                    yield out, None
        last = released.add("", final=True)
        if last:
            yield last, None
        if generated is None:
            raise RuntimeError("the models service's stream ended without its counts")
        yield "", self._finish(grounded, released.text, released.blocked, {**generated, "text": released.text})

    @bentoml.api(route="/answer")
    async def answer(self, question: str = Field(description="The user's question"), k: int = Field(default=CONTEXT_CHUNKS, ge=1, le=20),
                     max_new_tokens: int = Field(default=64, ge=1, le=1024), ctx: bentoml.Context = None) -> dict:
        """A RAG answer with the chunks it was given and the model version that wrote it."""
        started = time.perf_counter()
        try:
            result = await self.rag(question, k, max_new_tokens, "answer", request_id_from(ctx.request.headers if ctx else None))
        except GuardrailViolation as err:
            errors_total.labels(endpoint="answer", status=str(err.status)).inc()
            raise bentoml.exceptions.BentoMLException(f"{err.code}: {err.message}", error_code=_status(err.status)) from None
        latency_hist.labels(endpoint="answer").observe(time.perf_counter() - started)
        return result

    @bentoml.api(route="/feedback")
    def feedback(self, request_id: str = Field(pattern=r"^req-[0-9a-f]{20}$"), rating: int = Field(ge=1, le=5),
                 correction: str | None = Field(default=None, max_length=8000), comment: str | None = Field(default=None, max_length=2000)) -> dict:
        """A rating (1 bad to 5 good) and an optional corrected answer for an earlier request."""
        record = self.log.feedback(request_id=request_id, rating=rating, correction=correction, comment=comment)
        return {"accepted": True, "request_id": request_id, "at": record["at"]}


def _status(code: int):
    from http import HTTPStatus

    return HTTPStatus(code)


DriftloopRAG.add_asgi_middleware(ApiKeyMiddleware, api_key=SETTINGS.api_key)
