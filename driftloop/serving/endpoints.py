"""The OpenAI-compatible endpoints beside chat: `/v1/models` and `/v1/embeddings`, on
the running `DriftloopRAG` service (its names, its retrieval model and lane)."""

from __future__ import annotations

import asyncio
import json

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse

from driftloop.serving.auth import openai_error
from driftloop.serving.chat import ChatError, parse_embeddings


async def list_models(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    data = [{"id": name, "object": "model", "created": service.started, "owned_by": "driftloop"}
            for name in [*service.model_names, *service.embedding_names]]
    return JSONResponse({"object": "list", "data": data})


async def embeddings(request: Request) -> JSONResponse:
    """`/v1/embeddings` with the model retrieval uses: the vectors the index was built on."""
    import base64

    service = bentoml.get_current_service()
    try:
        asked = parse_embeddings(json.loads(await request.body()), service.embedding_names)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return openai_error(400, "the request body is not valid JSON")
    except ChatError as err:
        return JSONResponse(err.body(), status_code=err.status)
    embedder = service.retrieval.embedder
    vectors = await asyncio.get_running_loop().run_in_executor(service._lane, lambda: embedder.encode(list(asked.inputs)))
    tokens = sum(len(ids) for ids in embedder.tokenizer(list(asked.inputs), add_special_tokens=True)["input_ids"])
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode() if asked.base64 else vector.tolist()}
            for i, vector in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": asked.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
