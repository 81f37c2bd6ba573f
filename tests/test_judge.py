"""The LLM judge: ragas' faithfulness and answer relevancy through an OpenAI-compatible
endpoint (a scripted server on loopback stands in for the remote model), the local
next-token judge, calibration, and what happens when the judge is down or talks nonsense."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftloop.evaluation.gate import GateRules, decide, gate_view
from driftloop.evaluation.judge import EndpointJudge, JudgeError, JudgeSample, JudgeSettings, LocalJudge, calibrate, statements, trust_statement
from driftloop.evaluation.metrics import REFUSAL, EvalItem
from driftloop.evaluation.report import is_partial, render_markdown
from judge_pairs import ScriptedCausalLM, ScriptedJudge, control_items

QUESTION = "What is the code word of the castle?"


def scripted_reply(prompt: str, mode: str) -> str:
    if mode == "garbage":
        return "Sure! I think the answer is probably fine."
    if mode in ("reader", "contrary"):
        return reading_reply(json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0]), mode == "contrary")
    if "noncommittal" in prompt:
        return json.dumps({"question": QUESTION, "noncommittal": 0})
    if "verdict" in prompt:
        return json.dumps({"statements": [{"statement": "The code word is tango.", "reason": "stated", "verdict": 1},
                                          {"statement": "The castle is blue.", "reason": "not stated", "verdict": 0}]})
    return json.dumps({"statements": ["The code word is tango.", "The castle is blue."]})


def reading_reply(task: dict, contrary: bool) -> str:
    """What a judge that reads ragas' input would reply to judge_pairs.control_items: the
    answer's sentences as statements, a verdict by whether the context holds the statement,
    and the question whose part number the answer names; `contrary` inverts each verdict
    and asks one fixed question whatever the answer."""
    if "response" in task:
        part = re.search(r"Part (\d+)", task["response"])
        return json.dumps({"question": "Where is the harbor?" if contrary else f"What does part {part[1]} do?", "noncommittal": 0})
    if "statements" in task:
        return json.dumps({"statements": [{"statement": s, "reason": "read", "verdict": int((s in task["context"]) != contrary)}
                                          for s in task["statements"]]})
    return json.dumps({"statements": statements(task["answer"])})


@pytest.fixture
def endpoint():
    """An OpenAI-compatible /v1/chat/completions on loopback; `mode` switches to garbage, or
    to a judge that reads its input (reader) or contradicts it (contrary)."""
    state = {"mode": "json", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"] += 1
            prompt = body["messages"][-1]["content"]
            content = scripted_reply(prompt if isinstance(prompt, str) else json.dumps(prompt), state["mode"])
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


@pytest.fixture(scope="module")
def scripted_local_judge(tiny_llama, embedder):
    """LocalJudge over a scripted model with the real tokenizer (set up as LocalJudge.load
    does), batches of 2 so statements of one sample straddle batches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    questions = {"The code word is tango. The castle is blue. The gate is red.": QUESTION,
                 "The tower is 40 m tall. It stands by the harbor.": "Which colour is the castle gate?",
                 "I don't know the answer here.": "What is unknown here?", "Ok.": "Is it ok?"}
    return LocalJudge(ScriptedCausalLM(tokenizer, questions), tokenizer, embedder, refusal=REFUSAL, batch_size=2, faithfulness="yesno")


def test_local_judge_counts_supported_statements_and_compares_written_questions(scripted_local_judge):
    scored = scripted_local_judge.score([
        JudgeSample(QUESTION, "The code word is tango. The castle is blue. The gate is red.", ("The code word is tango. The gate is red.",)),
        JudgeSample("How tall is the tower by the harbor?", "The tower is 40 m tall. It stands by the harbor.",
                    ("It stands by the harbor. The tower is 40 m tall.",)),
        JudgeSample("Why?", "", ("c",)),
        JudgeSample("Where?", "I don't know the answer here.", ("The answer is here.",)),
        JudgeSample("Is it?", "Ok.", ("c",)),
    ])
    # Supported statements over all statements, each verdict P(Yes) >= 0.5: 2 of 3, 2 of 2,
    # and the refusal is not in its context.
    assert scored.faithfulness == [2 / 3, 1.0, None, 0.0, None]
    # The judge wrote back the first question itself (cosine 1) and an unrelated one for the second.
    assert scored.answer_relevancy[0] == pytest.approx(1.0, abs=1e-5) and scored.answer_relevancy[1] < 0.99
    assert scored.answer_relevancy[2] is None  # nothing to judge is not a score
    assert scored.answer_relevancy[3] == 0.0  # a noncommittal answer is irrelevant by ragas' definition
    assert scored.answer_relevancy[4] is not None  # too short for a statement, still an answer to a question


def test_local_judge_with_its_model_loaded_from_disk_scores_what_it_can(tiny_llama, embedder):
    """Through LocalJudge.load on the tiny random Llama: its verdicts are noise, but what
    has no statement has no faithfulness, and a refusal has relevancy 0 whatever it writes."""
    judge = LocalJudge.load(tiny_llama, embedder, refusal=REFUSAL)
    scored = judge.score([JudgeSample("Why?", "", ("c",)), JudgeSample("Where?", "I don't know the answer here.", ("c",))])
    assert scored.faithfulness[0] is None and scored.answer_relevancy[0] is None
    assert scored.answer_relevancy[1] == 0.0


@pytest.mark.parametrize("wrong, faithfulness, relevancy, trusted, verdict", [
    ({}, 1.0, 1.0, {"faithfulness": True, "answer_relevancy": True}, "trusted"),
    # Wrong on one of four faithfulness pairs is 0.75, exactly the bar; on relevancy it is
    # right on two, ties one (half a point) and is wrong on one: 2.5 of 4.
    ({"faith_wrong": ["q1"], "relevancy_wrong": ["q2"], "relevancy_tie": ["q3"]}, 0.75, 0.625,
     {"faithfulness": True, "answer_relevancy": False}, "partly trusted"),
    ({"faith_wrong": ["q0", "q1", "q2", "q3"], "relevancy_wrong": ["q0", "q1", "q2", "q3"]}, 0.0, 0.0,
     {"faithfulness": False, "answer_relevancy": False}, "not trusted"),
])
def test_calibration_measures_the_agreement_a_judge_has(wrong, faithfulness, relevancy, trusted, verdict):
    items = control_items(4)
    calibration = calibrate(ScriptedJudge(items, **wrong), items, 4)
    assert (calibration["faithfulness"], calibration["answer_relevancy"]) == (faithfulness, relevancy)
    assert calibration["pairs"] == 4 and calibration["scored_pairs"] == {"faithfulness": 4, "answer_relevancy": 4}
    trust = trust_statement("scripted", calibration, 0.75)
    assert trust["trusted"] == trusted and trust["verdict"] == verdict
    assert f"on 4 control pairs: faithfulness {faithfulness:.0%}, answer_relevancy {relevancy:.0%}" in trust["text"]
    assert f"Verdict: {verdict}." in trust["text"]


@pytest.mark.parametrize("mode, faithfulness, relevancy, verdict", [("reader", 1.0, 1.0, "trusted"), ("contrary", 0.0, 0.5, "not trusted")])
def test_endpoint_judge_calibration_follows_the_verdicts_of_the_model_behind_it(endpoint, embedder, mode, faithfulness, relevancy,
                                                                                 verdict):
    """A model that reads (a statement is supported when the context holds it; the question
    written back is the answer's own) is trusted; one that inverts every verdict and writes
    back the same question for every answer (so each relevancy pair ties) is not."""
    url, state = endpoint
    state["mode"] = mode
    judge = EndpointJudge(url, "judge-model", embedder, strictness=1)
    calibration = calibrate(judge, control_items(4), 4)
    assert calibration["errors"] == []
    assert calibration["scored_pairs"] == {"faithfulness": 4, "answer_relevancy": 4}
    assert calibration["faithfulness"] == faithfulness and calibration["answer_relevancy"] == relevancy
    assert trust_statement(judge.name, calibration, 0.75)["verdict"] == verdict


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


def test_k_precision_is_the_share_of_answer_tokens_its_contexts_hold():
    from driftloop.evaluation.judge import k_precision

    # "castle" and "blue" are not in the context: 8 of 10 tokens once articles and punctuation go.
    assert k_precision("The code word is tango. The castle is blue. The gate is red.", ("The code word is tango. The gate is red.",)) == 0.8
    assert k_precision("It stands by the HARBOR!", ("The tower is 40 m tall.", "It stands by the harbor.")) == 1.0
    assert k_precision("The default is 10.", ("The default is 5.",)) == 2 / 3
    assert k_precision("", ("c",)) is None and k_precision("The.", ("c",)) is None
    with pytest.raises(JudgeError, match="faithfulness method must be one of kprecision, yesno, not 'nli'"):
        JudgeSettings(faithfulness="nli")
