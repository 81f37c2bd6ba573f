"""The LLM judge: ragas' faithfulness and answer relevancy through an OpenAI-compatible
endpoint (a scripted server on loopback stands in for the remote model), the local
next-token judge, calibration, and what happens when the judge is down or talks nonsense."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftloop.evaluation.gate import GateRules, decide, gate_view
from driftloop.evaluation.judge import EndpointJudge, JudgeSample, LocalJudge, calibrate, statements, trust_statement
from driftloop.evaluation.metrics import REFUSAL, EvalItem
from driftloop.evaluation.report import is_partial, render_markdown

QUESTION = "What is the code word of the castle?"


def scripted_reply(prompt: str, garbage: bool) -> str:
    if garbage:
        return "Sure! I think the answer is probably fine."
    if "noncommittal" in prompt:
        return json.dumps({"question": QUESTION, "noncommittal": 0})
    if "verdict" in prompt:
        return json.dumps({"statements": [{"statement": "The code word is tango.", "reason": "stated", "verdict": 1},
                                          {"statement": "The castle is blue.", "reason": "not stated", "verdict": 0}]})
    return json.dumps({"statements": ["The code word is tango.", "The castle is blue."]})


@pytest.fixture
def endpoint():
    """An OpenAI-compatible /v1/chat/completions on loopback; `mode` switches to garbage."""
    state = {"mode": "json", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"] += 1
            prompt = body["messages"][-1]["content"]
            content = scripted_reply(prompt if isinstance(prompt, str) else json.dumps(prompt), state["mode"] == "garbage")
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()


@pytest.fixture(scope="module")
def embedder(tiny_embedding_model):
    from driftloop.models.embedding import load_embedder

    return load_embedder(tiny_embedding_model, device="cpu", precision="fp32")


def samples():
    return [JudgeSample(QUESTION, "The code word is tango. The castle is blue.", ("The castle's code word is tango.",)),
            JudgeSample("How tall is the tower by the harbor?", "The tower is tall. It stands by the harbor.", ("The tower is 40 m tall.",))]


def test_statements_are_full_sentences():
    assert statements("The code word is tango. Yes. It is kept\nin the castle tower!") == ["The code word is tango.", "It is kept", "in the castle tower!"]
    assert statements("") == [] and statements("Ok.") == []


def test_endpoint_judge_runs_ragas_metrics(endpoint, embedder):
    url, state = endpoint
    scores = EndpointJudge(url, "judge-model", embedder, strictness=2).score(samples())
    assert scores.errors == []
    # ragas' faithfulness: one of the two statements the judge returned is supported.
    assert scores.faithfulness == [0.5, 0.5]
    # ragas' answer relevancy: the judge wrote back the first sample's own question
    # (cosine 1) and the same question for the second (a different question, lower).
    assert scores.answer_relevancy[0] == pytest.approx(1.0, abs=1e-5)
    assert scores.answer_relevancy[1] < 0.999
    assert state["requests"] == 2 * 2 + 2 * 2  # two faithfulness calls and `strictness` relevancy calls per sample


def test_endpoint_garbage_and_outage_leave_scores_missing(endpoint, embedder):
    url, state = endpoint
    state["mode"] = "garbage"
    garbled = EndpointJudge(url, "judge-model", embedder, strictness=1).score(samples())
    assert garbled.faithfulness == [None, None] and garbled.answer_relevancy == [None, None]
    assert garbled.errors

    down = EndpointJudge("http://127.0.0.1:9/v1", "judge-model", embedder, timeout_s=5, strictness=1)
    items = [EvalItem(f"q{i}", f"Question {i}?", f"The answer number {i} is here.", f"Context {i} says the answer is {i}.", f"d{i}")
             for i in range(4)]
    calibration = calibrate(down, items, 4)
    assert calibration["faithfulness"] is None and calibration["scored_pairs"] == {"faithfulness": 0, "answer_relevancy": 0}
    assert any("Connection" in e for e in calibration["errors"])
    trust = trust_statement(down.name, calibration, 0.75)
    assert trust["verdict"] == "not trusted"


def test_local_judge_scores_calibrates_and_skips_empty_answers(tiny_llama, embedder):
    judge = LocalJudge.load(tiny_llama, embedder, refusal=REFUSAL)
    scored = judge.score([*samples(), JudgeSample("Why?", "", ("c",)), JudgeSample("Where?", "I don't know the answer here.", ("c",))])
    assert all(0.0 <= v <= 1.0 for v in scored.faithfulness[:2])
    assert scored.faithfulness[2] is None and scored.answer_relevancy[2] is None  # nothing to judge is not a score
    assert scored.answer_relevancy[3] == 0.0  # a noncommittal answer is irrelevant by ragas' definition
    items = [EvalItem(f"q{i}", f"What does part {i} do?", f"Part {i} parses tokens quickly.", f"Part {i}: it parses tokens quickly.", f"d{i}")
             for i in range(4)]
    calibration = calibrate(judge, items, 4)
    assert calibration["pairs"] == 4 and 0.0 <= calibration["faithfulness"] <= 1.0
    trust = trust_statement(judge.name, calibration, 0.75)
    assert trust["text"].startswith(f"Judge `{judge.name}` agreed") and trust["verdict"] in ("trusted", "partly trusted", "not trusted")


def test_untrusted_or_failed_judge_counts_as_missing_for_the_gate():
    untrusted = {"trusted": {"faithfulness": False, "answer_relevancy": True}, "available": True, "text": "t"}
    challenger = {"faithfulness": 0.9, "answer_relevancy": 0.8, "semantic_similarity": 0.5}
    rules = GateRules(floors={"faithfulness": 0.5, "answer_relevancy": 0.5}, no_regression=())
    gate = decide(gate_view(challenger, untrusted), None, rules)
    assert not gate["passed"] and gate["failures"] == ["faithfulness missing below floor 0.5"]
    assert decide(gate_view(challenger, {**untrusted, "trusted": {"faithfulness": True, "answer_relevancy": True}}), None, rules)["passed"]
    down = {**untrusted, "available": False, "text": "PARTIAL REPORT: judge down"}
    assert not decide(gate_view(challenger, down), None, rules)["passed"]

    result = {"n_questions": 1, "k": 1, "prompt_version": "rag.v1", "judge": down, "questions": {},
              "models": {"challenger": {**challenger, "judge_errors": 0.0}}}
    assert is_partial(result)
    text = render_markdown(result, {"passed": False, "failures": ["x"], "checks": []}, "t", "c.png")
    assert "**PARTIAL REPORT" in text and "PARTIAL REPORT: judge down" in text
