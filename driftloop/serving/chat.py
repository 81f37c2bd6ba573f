"""The OpenAI chat-completions request as clients send it: parsed, validated with OpenAI's
error codes, and turned into the prompt the generator sees.

The whole `messages` list counts. The client's system (or developer) messages follow the
service's own RAG instructions in the one system turn the chat templates take; earlier
user and assistant turns stay as history, the oldest dropped first when the prompt would
not fit the context budget; the last user turn is the question, grounded in what the
retrieval found for it. Sampling follows the request: temperature 0 (or none given) is
greedy, as evaluation is; `seed` makes a sampled answer repeatable; `stop` ends it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SYSTEM_ROLES = ("system", "developer")
TURN_ROLES = ("user", "assistant")
MAX_STOP = 4


class ChatError(ValueError):
    """A request OpenAI's API would refuse: `status` and `code` as OpenAI sends them."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key(self) -> object:
        """Requests with equal keys may share a generate batch: one call samples one way.
        A seeded request is alone in its batch (its key equals no other), so its answer
        depends on its prompt and seed, not on what else was queued."""
        if self.greedy:
            return ("greedy", self.stop)
        return object() if self.seed is not None else (self.temperature, self.top_p, self.stop)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, values: dict | None) -> Sampling:
        values = values or {}
        return cls(float(values.get("temperature", 0.0)), float(values.get("top_p", 1.0)), values.get("seed"), tuple(values.get("stop") or ()))


@dataclass(frozen=True)
class ChatRequest:
    model: str
    question: str
    system: tuple[str, ...] = ()
    history: tuple[dict, ...] = ()
    max_tokens: int = 64
    sampling: Sampling = field(default_factory=Sampling)
    stream: bool = False
    include_usage: bool = False


def _text(content, where: str) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds <= {"text"}:
            return "".join(str(p.get("text", "")) for p in content)
        raise ChatError(400, f"{where}: only text content is supported, not {sorted(k for k in kinds if k != 'text')}", "unsupported_content", where)
    raise ChatError(400, f"{where}: content must be a string or a list of text parts", "invalid_messages", where)


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value if low_open else low <= value) or value > high:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ChatError(400, f"{name} must be a number in {bounds}, got {value!r}", f"invalid_{name}", name)
    return float(value)


def _served_model(body: object, models: Sequence[str]) -> str:
    """The request's model, when the body is an object and the model is one this endpoint serves."""
    if not isinstance(body, dict):
        raise ChatError(400, "the request body must be a JSON object", "invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or model not in models:
        raise ChatError(404, f"the model {model!r} does not exist here; this endpoint serves {list(models)} (GET /v1/models lists all)",
                        "model_not_found", "model")
    return model


def parse_chat(body: object, models: Sequence[str], max_tokens_limit: int = 1024) -> ChatRequest:
    model = _served_model(body, models)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "messages must be a non-empty list of {role, content} objects", "invalid_messages", "messages")
    system, turns = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in (*SYSTEM_ROLES, *TURN_ROLES):
            raise ChatError(400, f"{where}: role must be one of {', '.join((*SYSTEM_ROLES, *TURN_ROLES))}", "invalid_messages", where)
        text = _text(message.get("content"), where)
        (system if message["role"] in SYSTEM_ROLES else turns).append({"role": message["role"], "content": text})
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise ChatError(400, "the last user or assistant message must be a non-empty user message: it is the question", "invalid_messages", "messages")
    if body.get("n", 1) != 1:
        raise ChatError(400, "n must be 1: the service writes one answer per request", "invalid_n", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 64))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= max_tokens_limit:
        raise ChatError(400, f"max_completion_tokens (or max_tokens) must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}",
                        "invalid_max_tokens", "max_completion_tokens")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ChatError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "invalid_stop", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ChatError(400, f"seed must be an integer, got {seed!r}", "invalid_seed", "seed")
    sampling = Sampling(_number(body, "temperature", 0.0, 0.0, 2.0), _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), seed, tuple(stop))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ChatError(400, "stream_options must be an object", "invalid_stream_options", "stream_options")
    return ChatRequest(model=model, question=turns[-1]["content"], system=tuple(m["content"] for m in system), history=tuple(turns[:-1]),
                       max_tokens=max_tokens, sampling=sampling, stream=bool(body.get("stream")), include_usage=bool(options.get("include_usage")))


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    base64: bool = False


MAX_EMBEDDING_INPUTS = 256


def parse_embeddings(body: object, models: Sequence[str]) -> EmbeddingRequest:
    """An OpenAI embeddings request: `input` one string or a list of them; the vectors as
    floats, or as base64 float32 (what the official client asks for by default)."""
    model = _served_model(body, models)
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_EMBEDDING_INPUTS or not all(isinstance(t, str) and t for t in inputs):
        raise ChatError(400, f"input must be a non-empty string or a list of 1 to {MAX_EMBEDDING_INPUTS} of them (token arrays are not taken)",
                        "invalid_input", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ChatError(400, f"encoding_format must be float or base64, got {encoding!r}", "invalid_encoding_format", "encoding_format")
    if body.get("dimensions") is not None:
        raise ChatError(400, "dimensions is not supported: the embedding model has one size", "invalid_dimensions", "dimensions")
    return EmbeddingRequest(model, tuple(inputs), encoding == "base64")


def compose(rag_messages: list[dict], request: ChatRequest, count_tokens: Callable[[list[dict]], int], budget: int) -> tuple[list[dict], int]:
    """The messages the generator sees and how many history turns were dropped: the RAG
    system turn with the client's instructions after it, as much history as fits
    `budget` tokens (whole user/assistant pairs, oldest first out), then the grounded
    question. A question that does not fit even alone is a 400 naming both counts."""
    system, question = rag_messages[0], rag_messages[-1]
    if request.system:
        system = {**system, "content": system["content"] + "\n\n" + "\n\n".join(request.system)}
    history = list(request.history)
    needed = count_tokens([system, question])
    if needed > budget:
        raise ChatError(400, f"the prompt needs {needed} tokens (system instructions, retrieved context and the last message) "
                             f"but the model's context budget is {budget}; shorten the last message or the system messages",
                        "context_length_exceeded", "messages")
    dropped = 0
    while history and count_tokens([system, *history, question]) > budget:
        # A pair at a time, so the history never starts with an orphaned assistant turn.
        cut = 2 if len(history) > 1 and history[0]["role"] == "user" and history[1]["role"] == "assistant" else 1
        history, dropped = history[cut:], dropped + cut
    return [system, *history, question], dropped


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop sequence (which OpenAI leaves out), and whether one was hit."""
    cuts = [text.index(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)
