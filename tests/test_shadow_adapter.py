"""The shadow as an adapter of the served model (issue: adapters switched per request in
one process): the base loaded once with the champion merged in, the shadow adapter
switched per batch, computing exactly what the shadow alone computes; client requests
lead every batch before shadow copies; over HTTP, each client request gets a shadow
answer in the request log under its id, from the shadow's version, and the client's
answer is the champion's."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving_helpers import call, make_bundle, read_request_log, serve


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_llama, tiny_embedding_model):
    return make_bundle(tmp_path_factory.mktemp("shadowed"), tiny_llama, tiny_embedding_model, shadow=True)


def prompts(answerer, n=4):
    return [answerer.tokenizer.apply_chat_template([{"role": "user", "content": f"What does section {i} say about the harbor?"}],
                                                   tokenize=False, add_generation_prompt=True) for i in range(n)]


def test_one_loaded_model_answers_as_the_champion_and_as_the_shadow(bundle):
    from driftloop.evaluation.generate import Answerer
    from driftloop.serving.engine import Generation

    served = Generation(bundle, "cpu", precision="fp32")
    asked = prompts(served.answerer)
    ids = [str(i) for i in range(len(asked))]
    alone = {}
    for name, folder in (("champion", bundle.adapter_dir), ("shadow", bundle.shadow_dir)):
        answerer = Answerer(bundle.spec["base_model"]["path"], "cpu", precision="fp32", prefix_cache_mb=0)
        answerer.add_adapter(name, folder)
        alone[name] = [a.answer for a in answerer.answer(name, asked, ids, 10, batch_size=4)]
    assert alone["champion"] != alone["shadow"], "the test needs two adapters that answer differently"
    for _ in range(2):  # and again, with both adapters' prompts in the prefix cache
        assert [r["text"] for r in served.generate(asked, 10)] == alone["champion"]
        assert [r["text"] for r in served.generate(asked, 10, adapter="shadow")] == alone["shadow"]
    with pytest.raises(KeyError, match="no adapter 'challenger'"):
        served.generate(asked, 4, adapter="challenger")


def test_client_requests_lead_every_batch_before_shadow_copies():
    from driftloop.serving.batcher import Batcher

    ran = []

    def run(items):
        ran.append([name for name, _ in items])
        time.sleep(0.05)
        return items

    async def scenario():
        batcher = Batcher(run, ThreadPoolExecutor(1), max_batch=4, window_s=0.02, key=lambda item: item[1], priority=lambda item: item[1] != "primary")
        jobs = [batcher.submit((f"s{i}", "shadow")) for i in range(3)] + [batcher.submit((f"p{i}", "primary")) for i in range(3)]
        await asyncio.gather(*jobs)

    asyncio.run(scenario())
    assert ran == [["p0", "p1", "p2"], ["s0", "s1", "s2"]]


def test_each_served_request_gets_a_shadow_answer_from_the_same_process(bundle, tmp_path):
    import json

    from driftloop.serving.shadow import compare_shadow

    with serve(tmp_path, bundle) as running:
        port = running["port"]
        answered = []
        for i in range(3):
            status, body = call(port, "/answer", {"question": f"What does section {i} say?", "k": 2, "max_new_tokens": 8})
            assert status == 200, body
            answered.append(json.loads(body))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = read_request_log(running["root"] / "data" / "serving")
            if sum(r.get("role") == "shadow" for r in rows) >= 3:
                break
            time.sleep(0.5)
        # A client may also ask for the shadow's version by name: the same model answers with that adapter.
        from openai import OpenAI

        from serving_helpers import KEY

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        shadow_version = bundle.spec["shadow_version"]
        assert shadow_version in [m.id for m in client.models.list().data]
        asked = client.chat.completions.create(model=shadow_version, messages=[{"role": "user", "content": "What does section 1 say?"}],
                                               max_tokens=6)
        time.sleep(1)
        named = [r for r in read_request_log(running["root"] / "data" / "serving") if r["request_id"] == asked.id]
    assert all(a["model_version"] == bundle.model_version for a in answered)
    shadows = {r["request_id"]: r for r in rows if r.get("role") == "shadow"}
    assert set(shadows) == {a["request_id"] for a in answered}
    assert {r["model_version"] for r in shadows.values()} == {bundle.spec["shadow_version"]}
    # Answered by the shadow adapter as the client's own request, with no copy beside it.
    assert [(r["model_version"], r.get("role")) for r in named] == [(shadow_version, "primary")]
    compared = compare_shadow(rows)
    assert compared["pairs"] == 3 and compared["shadow_versions"] == [bundle.spec["shadow_version"]] and compared["shadow_errors"] == 0
