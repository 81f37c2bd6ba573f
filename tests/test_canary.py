"""Canary releases: the decision rule on synthetic sides (a regression rolls back early, an
equal version is promoted, its false-rollback rate stays within alpha), the evidence read
from a real request log, and end to end on real BentoML services behind the supervisor: a
version that blocks every question is rolled back by the sensor's run with no request
failing, and a good one is promoted, both recorded in the registry and in Dagster."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from driftloop.monitoring.canary import CanaryPolicy, Side, decide, evidence, side_from
from driftloop.serving.requestlog import RequestLog


def side(n: int, rng: random.Random, refusal: float = 0.02, latency: float = 1.0, failures: int = 0) -> Side:
    rows = [{"status": 200, "answer": "I don't know." if rng.random() < refusal else "Use json.dumps.",
             "latency_s": rng.lognormvariate(0, 0.3) * latency} for _ in range(n)]
    return side_from(rows, {"requests": n, "failures": failures})


def test_a_version_that_refuses_everything_is_rolled_back_at_an_interim_look():
    rng = random.Random(0)
    decision = decide(CanaryPolicy(min_requests=200), side(12, rng), side(12, rng, refusal=1.0))
    assert decision.verdict == "rollback" and decision.look == "interim" and "refusal_rate" in decision.reason
    assert decision.tests["refusal_rate"]["regression"] and not decision.tests["latency_p95"]["regression"]
    # Three refusals in twelve is not yet evidence at the interim boundary.
    few = side(12, rng, refusal=0.0)
    few.refusals = 3
    assert decide(CanaryPolicy(min_requests=200), side(12, rng, refusal=0.0), few).verdict == "wait"


def test_an_equal_version_is_promoted_at_the_final_look_and_rarely_rolled_back():
    policy = CanaryPolicy(min_requests=100)
    rng = random.Random(1)
    first = decide(policy, side(150, rng), side(100, rng))
    assert first.verdict == "promote" and first.look == "final" and "Haybittle-Peto" in first.rule
    assert decide(policy, side(150, rng), side(99, rng)).verdict == "wait"
    rollbacks = sum(decide(policy, side(150, rng), side(120, rng)).verdict == "rollback" for _ in range(200))
    assert rollbacks <= 10, rollbacks  # alpha 0.05 over five signals, Bonferroni: at most about 5%


def test_a_regression_needs_significance_and_a_size_that_matters():
    rng = random.Random(2)
    policy = CanaryPolicy(min_requests=100)
    slow = decide(policy, side(300, rng), side(300, rng, latency=2.0))
    assert slow.verdict == "rollback" and slow.tests["latency_p95"]["regression"] and slow.tests["latency_p95"]["p95_ratio"] > 1.5
    # 20% slower is significant at this size, but below the p95 ratio that counts.
    assert decide(policy, side(300, rng), side(300, rng, latency=1.2)).verdict == "promote"
    failing = decide(policy, side(300, rng), side(300, rng, failures=30))
    assert failing.verdict == "rollback" and failing.tests["failure_rate"]["regression"]
    # One more failure in 300 is no regression, however the test falls.
    assert decide(policy, side(300, rng, failures=1), side(300, rng, failures=2)).verdict == "promote"


def test_a_bad_policy_names_its_field():
    with pytest.raises(ValueError, match="share"):
        CanaryPolicy(share=1.5)
    with pytest.raises(ValueError, match="decide_on names unknown signals"):
        CanaryPolicy(decide_on=("refusal",))
    with pytest.raises(ValueError, match="interim_alpha"):
        CanaryPolicy(alpha=0.01, interim_alpha=0.05)


def test_evidence_splits_the_request_log_by_version_with_feedback_and_cache_hits(tmp_path):
    log = RequestLog(tmp_path)
    started = datetime.now(UTC).isoformat()
    for i in range(6):
        log.request(request_id=f"req-{i:020x}", endpoint="answer", question="q", answer="I don't know." if i % 2 else "fine",
                    model_version="lora-new", latency_s=0.5, prompt_tokens=1, completion_tokens=1, chunk_ids=[])
        log.request(request_id=f"req-{i + 100:020x}", endpoint="answer", question="q", answer="fine", model_version="lora-old",
                    latency_s=0.2, prompt_tokens=1, completion_tokens=1, chunk_ids=[], guardrail="injection" if i == 0 else None,
                    status=400 if i == 0 else 200)
    # A cache hit is a request, not an answer of the model's; a shadow copy is no traffic at all.
    log.request(request_id="req-" + "f" * 20, endpoint="answer", question="q", answer="I don't know.", model_version="lora-new",
                latency_s=0.001, prompt_tokens=0, completion_tokens=0, chunk_ids=[], cache={"hit": True})
    log.request(request_id="req-" + "e" * 20, endpoint="answer", question="q", answer="I don't know.", model_version="lora-new",
                latency_s=0.5, prompt_tokens=0, completion_tokens=0, chunk_ids=[], role="shadow")
    log.feedback(request_id=f"req-{1:020x}", rating=1)
    log.feedback(request_id=f"req-{3:020x}", rating=5)
    canary = {"started_at": started, "model_version": "lora-new", "baseline_version": "lora-old",
              "sides": {"canary": {"requests": 7, "failures": 0}, "baseline": {"requests": 6, "failures": 1}}}
    base, cand, shifts = evidence(tmp_path, canary, datetime.now(UTC))
    assert (cand.answered, cand.refusals, len(cand.latencies), cand.rated, cand.negative) == (7, 3, 6, 2, 1)
    assert (base.answered, base.guardrail, base.refusals, base.failures, base.requests) == (6, 1, 0, 1, 6)
    assert set(shifts) == {"answer_chars", "completion_tokens", "top_retrieval_score"}


@pytest.mark.scenario  # `make canary`; the supervisor's side runs in CI (tests/test_supervisor.py)
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bad_canary_is_rolled_back_unattended_and_a_good_one_is_promoted(tmp_path, monkeypatch, tiny_llama, tiny_embedding_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assets.keys import CANARY, CHAMPION
    from assets.serving import canary as canary_asset
    from driftloop.layout import Layout
    from driftloop.registry import AdapterRegistry
    from driftloop.serving.bento import build_bento
    from driftloop.serving.bundle import build_bundle
    from driftloop.serving.deploy import LocalTarget
    from driftloop.serving.supervisor.client import SupervisorClient
    from driftloop.settings import Settings
    from resources.deployer import LocalDeployer
    from resources.registry import ModelRegistry
    from sensors.canary import canary_sensor
    from serving_helpers import KEY, call, free_port_pair, make_bundle

    monkeypatch.setenv("DRIFTLOOP_API_KEY", KEY)
    layout = Layout.from_env()
    first = make_bundle(tmp_path / "svc", tiny_llama, tiny_embedding_model)
    registry = AdapterRegistry(tmp_path / "svc" / "registry")

    def version(name: str, seed: int, **settings):
        torch.manual_seed(seed)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                                         init_lora_weights=False))
        peft.save_pretrained(tmp_path / name)
        adapter = registry.publish(tmp_path / name, {"note": name})
        bundle = build_bundle(layout.bundles, base_model=first.spec["base_model"], adapter=adapter.path, adapter_version=adapter.version,
                              index_folder=first.index_dir, embedding_model=first.spec["embedding_model"], prompt_version="rag.v1",
                              settings={**first.spec["settings"], **settings})
        return adapter.version, build_bento(bundle, layout.home)

    good = (first.model_version, build_bento(first, layout.home))
    # The bad release: a guardrail limit misconfigured to 10 characters blocks every question.
    bad = version("bad", 1, max_input_chars=10)
    better = version("better", 2)
    registry.promote(good[0], {"perplexity": 10.0}, {}, gate={"passed": True})
    registry.promote(bad[0], {"perplexity": 9.0}, {}, gate={"passed": True})

    port = free_port_pair()
    target = LocalTarget(layout, port)
    resources = {"deployer": LocalDeployer(port=port), "model_registry": ModelRegistry(root=str(registry.root))}
    instance = dg.DagsterInstance.ephemeral()
    sensor = canary_sensor(Settings())
    policy = {"share": 0.5, "min_requests": 12}
    seen: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            user = f"user-{i % 40}"
            try:
                status, body = call(port, "/answer", {"question": f"What does section {i % 7} say?", "k": 2, "max_new_tokens": 2},
                                    headers={"X-Driftloop-User": user})
                seen.append((status, user, json.loads(body).get("model_version") if status == 200 else body[:200]))
            except OSError as err:  # a refused or reset connection is a failed request too
                seen.append((0, user, repr(err)))
            i += 3

    def decided(timeout_s: float = 300) -> dg.RunRequest:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = sensor(dg.build_sensor_context(instance=instance, resources={"deployer": resources["deployer"]}))
            if isinstance(result, dg.RunRequest):
                return result
            time.sleep(1)
        raise AssertionError(f"the sensor never decided: {result.skip_message}")

    def run(request: dg.RunRequest) -> dict:
        result = dg.materialize([canary_asset], instance=instance, resources=resources, run_config=request.run_config, tags=request.tags)
        assert result.success
        return {k: v.value for k, v in result.asset_materializations_for_node(CANARY.to_python_identifier())[0].metadata.items()}

    threads = [threading.Thread(target=client, args=(offset,), daemon=True) for offset in range(2)]
    try:
        assert target.deploy(good[1], good[0], {"by": "test"}).action == "deployed"
        for thread in threads:
            thread.start()
        assert target.canary(bad[1], bad[0], policy, {"by": "test"}).action == "canary"
        request = decided()
        assert request.tags["driftloop/canary_verdict"] == "rollback" and request.run_key.startswith(f"canary-{bad[1]}-")
        meta = run(request)
        assert meta["verdict"] == "rollback" and "guardrail_rate" in meta["reason"] and meta["outcome"].startswith("rolled back")
        rolled_back_at = len(seen)
        status = SupervisorClient(target.control_url).status()
        assert status["canary"] is None and status["active"]["name"] == good[1]
        assert registry.champion().version == good[0]
        event = registry.history()[-1]
        assert event["action"] == "rollback" and event["decision"]["verdict"] == "rollback" and event["run_id"]
        champion = instance.get_latest_materialization_event(CHAMPION).asset_materialization
        assert champion.metadata["champion"].value == good[0] and champion.metadata["action"].value == "rollback"
        # The same canary is never decided twice: the sensor has nothing left to decide.
        assert not isinstance(sensor(dg.build_sensor_context(instance=instance, resources={"deployer": resources["deployer"]})),
                              dg.RunRequest)

        registry.promote(better[0], {"perplexity": 8.0}, {}, gate={"passed": True})
        assert target.canary(better[1], better[0], policy, {"by": "test"}).action == "canary"
        request = decided()
        meta = run(request)
        assert meta["verdict"] == "promote", meta
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        status = SupervisorClient(target.control_url).status()
        assert status["canary"] is None and status["active"]["name"] == better[1]
        assert registry.champion().version == better[0] and registry.history()[-1]["action"] == "canary_promote"
        audit = [json.loads(line) for line in layout.deployments.read_text().splitlines()]
        assert [(a["action"], a["model_version"]) for a in audit] == [
            ("deployed", good[0]), ("canary", bad[0]), ("canary_rolled_back", bad[0]), ("canary", better[0]), ("deployed", better[0])]
    finally:
        stop.set()
        SupervisorClient(target.control_url).shutdown()
    # No request failed: every one was answered, by the good versions, except the bad
    # canary's own blocks (413) on its side of the users until it was rolled back.
    assert all(s == 200 or (s == 413 and "input_too_long" in b) for s, _, b in seen), [x for x in seen if x[0] not in (200, 413)][:5]
    blocked_users = {u for s, u, _ in seen if s == 413}
    assert blocked_users and all(s == 200 for s, _, _ in seen[rolled_back_at + 4:])
    answered_by = {b for s, _, b in seen if s == 200}
    assert answered_by == {good[0], better[0]}
