"""OpenAI's chat completions on the driftloop service (`/v1/chat/completions`): the whole
request (system prompts, history, sampling, stop) through the same guardrails, retrieval and
generation as `/answer`, answered whole or streamed as OpenAI's chunk events."""

import json
import logging
import time

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from driftloop.prompts import CONTEXT_CHUNKS
from driftloop.serving.auth import openai_error
from driftloop.serving.chat import ChatError, ChatRequest, parse_chat
from driftloop.serving.guardrails import GuardrailViolation
from driftloop.serving.metrics import errors_total, latency_hist
from driftloop.serving.shadow import request_id_from


async def chat_completions(request: Request):
    service = bentoml.get_current_service()
    started = time.perf_counter()
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        errors_total.labels(endpoint="chat", status="400").inc()
        return openai_error(400, "the request body is not valid JSON")
    try:
        chat = parse_chat(body, service.model_names)
        if chat.stream:
            # Everything that can refuse the request happens before the stream opens, so a
            # refusal is an HTTP error, as OpenAI's is.
            grounded = await service._ground(chat.question, CONTEXT_CHUNKS, chat.max_tokens, "chat", request_id_from(request.headers), chat)
        else:
            result = await service.rag(chat.question, k=CONTEXT_CHUNKS, max_new_tokens=chat.max_tokens, endpoint="chat",
                                       request_id=request_id_from(request.headers), chat=chat)
    except ChatError as err:
        errors_total.labels(endpoint="chat", status=str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status)
    except GuardrailViolation as err:
        errors_total.labels(endpoint="chat", status=str(err.status)).inc()
        return openai_error(err.status, err.message, code=err.code)
    created = int(time.time())
    if chat.stream:
        return StreamingResponse(_chat_events(service, grounded, chat, created, started), media_type="text/event-stream")
    latency_hist.labels(endpoint="chat").observe(time.perf_counter() - started)
    message = {"role": "assistant", "content": result["answer"]}
    return JSONResponse({"id": result["request_id"], "object": "chat.completion", "created": created, "model": chat.model,
                         "choices": [{"index": 0, "message": message, "finish_reason": result["finish_reason"]}], "usage": _usage(result),
                         "driftloop": {"model_version": result["model_version"], "chunks": result["chunks"],
                                       "route": result.get("route", "rag"), **({"cache": result["cache"]} if "cache" in result else {})}})


def _usage(result: dict) -> dict:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


async def _chat_events(service, grounded: dict, chat: ChatRequest, created: int, started: float):
    """OpenAI's chunk stream: the role, a delta per piece as it is generated, the finish
    reason, the usage when asked, then [DONE]. A failure mid-stream (the headers are sent)
    ends it with an error event, as OpenAI's API does."""
    base = {"id": grounded["request_id"], "object": "chat.completion.chunk", "created": created, "model": chat.model}

    def event(payload: dict) -> str:
        return f"data: {json.dumps({**base, **payload})}\n\n"

    yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    try:
        async for piece, result in service.rag_stream(grounded):
            if result is None:
                yield event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    except Exception as err:  # noqa: BLE001 - the client is owed an end to the stream
        errors_total.labels(endpoint="chat", status="stream").inc()
        logging.getLogger("driftloop.service").warning("chat stream %s failed: %r", grounded["request_id"], err)
        yield f"data: {json.dumps({'error': {'message': 'generation failed mid-stream', 'type': 'server_error', 'code': None, 'param': None}})}\n\n"
        return
    latency_hist.labels(endpoint="chat").observe(time.perf_counter() - started)
    yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": result["finish_reason"]}]})
    if chat.include_usage:
        # OpenAI's shape: one last chunk with no choices and the request's usage.
        yield event({"choices": [], "usage": _usage(result)})
    yield "data: [DONE]\n\n"
