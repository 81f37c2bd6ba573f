"""The monitoring stage in process: the request log read back by day (feedback joined,
corrupt lines counted), the drift report on in-distribution and new-topic traffic (real
data assets, a tiny embedding model), and the sensors of the closed loop evaluated with
`build_sensor_context` against a real instance: one retrain per drift window, drift
checks on new traffic, and new documents in the inbox."""

import json
import random
from datetime import UTC, datetime

import dagster as dg
import pytest

from conftest import SECTION_CONTEXTS, data_resources

from assets.data import SOURCE_DOCUMENTS, data_assets, data_checks
from assets.monitoring import drift_report, inference_log
from resources.models import ModelCatalog
from driftloop.serving.requestlog import RequestLog
from driftloop.settings import Settings
from sensors.drift import drift_sensors
from sensors.new_documents import new_documents_sensor

NEW_TOPIC = ("kubernetes pod eviction quota scheduler taint toleration ingress helm chart namespace volume claim "
             "replica autoscaler sidecar daemonset cronjob secret configmap node affinity").split()
CHECK = {"min_queries": 30, "permutations": 200, "reference_queries": 200}


@pytest.fixture
def stage(tmp_path, dvc_store, corpus, tiny_embedding_model, monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_SOURCE_DIR", str(corpus))
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([*data_assets, *data_checks], resources=data_resources(dvc_store), instance=instance,
                   run_config={"ops": {"data__qa_pairs": {"config": {"eval_fraction": 0.4}}, **SECTION_CONTEXTS}})
    questions = [r["question"] for r in map(json.loads, dvc_store.dataset_path("qa_pairs").read_text().splitlines())]
    resources = {"dvc": dvc_store, "models": ModelCatalog(embedding_model=tiny_embedding_model, device="cpu", embedding_precision="fp32")}
    return {"instance": instance, "resources": resources, "questions": questions, "home": tmp_path / "home"}


def send(log: RequestLog, questions, model="lora-aaaa", **extra) -> list[str]:
    ids = []
    for i, q in enumerate(questions):
        record = log.request(request_id=f"req-{i:020x}", endpoint="answer", question=q, answer=f"An answer about {q[:30]}",
                             model_version=model, latency_s=0.5 + (i % 5) / 10, prompt_tokens=100, completion_tokens=20,
                             chunk_ids=["c1"], scores=[0.6, 0.5], **extra)
        ids.append(record["request_id"])
    return ids


def check(stage) -> dict:
    result = dg.materialize([drift_report], resources=stage["resources"], instance=stage["instance"],
                            run_config={"ops": {"monitoring__drift_report": {"config": CHECK}}})
    event = result.asset_materializations_for_node("monitoring__drift_report")[0]
    return {k: v.value for k, v in event.metadata.items()}


def sensor_tick(sensor, instance, cursor=None):
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_drift_report_says_not_enough_data_then_flags_a_new_topic_once(stage):
    log = RequestLog(stage["home"] / "data" / "serving")
    empty = check(stage)
    assert empty["enough_data"] is False and empty["drifted"] is False and "not enough data" in empty["summary"]

    rng = random.Random(0)
    send(log, rng.sample(stage["questions"], min(60, len(stage["questions"]))))
    folder = stage["home"] / "data" / "serving" / "requests" / f"date={datetime.now(UTC):%Y-%m-%d}"
    with (folder / "torn.jsonl").open("w") as handle:
        handle.write('{"at": "2026-11-23T00:00:00+00:00", "endpoint": "answer"\nnot json at all\n')
    calm = check(stage)
    assert calm["enough_data"] is True and calm["drifted"] is False, calm["summary"]
    assert calm["corrupt_lines"] == 2 and calm["n_current"] >= 30

    instance = stage["instance"]
    drift_retrain = drift_sensors(Settings())[1]
    first = sensor_tick(drift_retrain, instance)
    assert not first.run_requests and "no drift" in (first.skip_message or "")

    # A new version goes live: a new window, whose traffic is about something else entirely.
    audit = stage["home"] / "artifacts" / "serving" / "deployments.jsonl"
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_text(json.dumps({"at": datetime.now(UTC).isoformat(), "target": "local", "action": "deployed", "tag": "driftloop:abc",
                                 "model_version": "lora-bbbb"}) + "\n")
    send(log, [" ".join(rng.sample(NEW_TOPIC, 6)) + "?" for _ in range(60)], model="lora-bbbb")
    shifted = check(stage)
    assert shifted["drifted"] is True and shifted["serving"] == "lora-bbbb", shifted["summary"]
    assert shifted["window_start"] > calm["window_start"]

    fired = sensor_tick(drift_retrain, instance, first.cursor)
    assert [r.run_key for r in fired.run_requests] == [f"drift-{shifted['window_start']}"]
    assert fired.run_requests[0].tags["driftloop/trigger"] == "drift"
    # The same window drifting again (another check, a restarted daemon) starts nothing new.
    check(stage)
    again = sensor_tick(drift_retrain, instance, fired.cursor)
    assert not again.run_requests and "already started a retrain" in again.skip_message

    # That retrain's version goes live and the topic still drifts from the reference: no
    # second retrain on the same data (a loop), and the skip says why; past the cooldown
    # it counts as drift again.
    with audit.open("a") as handle:
        handle.write(json.dumps({"at": datetime.now(UTC).isoformat(), "target": "local", "action": "deployed", "tag": "driftloop:def",
                                 "model_version": "lora-cccc", "drift_window": shifted["window_start"]}) + "\n")
    send(log, [" ".join(rng.sample(NEW_TOPIC, 6)) + "?" for _ in range(60)], model="lora-cccc")
    persisting = check(stage)
    assert persisting["drifted"] is True and persisting["retrained_for_window"] == shifted["window_start"], persisting["summary"]
    held = sensor_tick(drift_retrain, instance, again.cursor)
    assert not held.run_requests and "drift persists" in held.skip_message and shifted["window_start"] in held.skip_message
    drift_retrain = drift_sensors(Settings(drift_retrain_cooldown_s=0))[1]
    check(stage)
    late = sensor_tick(drift_retrain, instance, held.cursor)
    assert [r.run_key for r in late.run_requests] == [f"drift-{persisting['window_start']}"]


def test_inference_log_partition_joins_feedback_and_compares_shadow(stage):
    log = RequestLog(stage["home"] / "data" / "serving")
    ids = send(log, stage["questions"][:6])
    log.request(request_id=ids[0], endpoint="answer", question=stage["questions"][0], answer="A different answer", model_version="lora-cccc",
                latency_s=0.9, prompt_tokens=100, completion_tokens=25, chunk_ids=["c1"], role="shadow")
    log.feedback(request_id=ids[1], rating=2, correction="The right answer, mailed to jane@corp.io")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    result = dg.materialize([inference_log], instance=stage["instance"], partition_key=day)
    meta = {k: v.value for k, v in result.asset_materializations_for_node("monitoring__inference_log")[0].metadata.items()}
    assert meta["dagster/row_count"] == 6 and meta["feedback"] == 1 and meta["corrections"] == 1 and meta["mean_rating"] == 2.0
    assert meta["shadow"]["pairs"] == 1 and meta["shadow"]["identical_answers"] == 0.0 and meta["shadow"]["shadow_versions"] == ["lora-cccc"]
    rows = (stage["home"] / "artifacts" / "monitoring" / "inference_log" / f"date={day}.jsonl").read_text().splitlines()
    assert "[EMAIL]" in next(r for r in rows if "correction" in r and json.loads(r).get("correction"))
    empty = dg.materialize([inference_log], instance=stage["instance"], partition_key="2026-01-02")
    assert empty.asset_materializations_for_node("monitoring__inference_log")[0].metadata["dagster/row_count"].value == 0


def test_drift_checks_follow_new_traffic(stage):
    drift_check_on_traffic = drift_sensors(Settings(drift_check_every=10))[0]
    log = RequestLog(stage["home"] / "data" / "serving")
    instance = stage["instance"]
    send(log, stage["questions"][:6])
    send(log, stage["questions"][:6], role="shadow")  # copies for a shadow are not traffic
    quiet = sensor_tick(drift_check_on_traffic, instance)
    assert not quiet.run_requests and "6 new requests" in quiet.skip_message
    send(log, stage["questions"][:5])
    due = sensor_tick(drift_check_on_traffic, instance, quiet.cursor)
    assert [r.run_key for r in due.run_requests] == ["drift-check-11"]
    assert not sensor_tick(drift_check_on_traffic, instance, due.cursor).run_requests
    # The tail of a burst, short of the count: checked once traffic has paused, not never.
    send(log, stage["questions"][:4])
    tail = sensor_tick(drift_check_on_traffic, instance, due.cursor)
    assert not tail.run_requests and "4 new requests" in tail.skip_message
    drift_check_on_traffic = drift_sensors(Settings(drift_check_every=10, drift_check_idle_s=1e-9))[0]
    paused = sensor_tick(drift_check_on_traffic, instance, tail.cursor)
    assert [r.run_key for r in paused.run_requests] == ["drift-check-15"]
    assert not sensor_tick(drift_check_on_traffic, instance, paused.cursor).run_requests


def test_new_documents_in_the_inbox_start_one_refresh(stage, dvc_store):
    new_documents = new_documents_sensor(Settings.from_env())
    instance = stage["instance"]
    assert not sensor_tick(new_documents, instance).run_requests  # ingested as it is
    # Nothing ingested yet: the first ingest is the main job's, never a refresh racing it.
    first = sensor_tick(new_documents, dg.DagsterInstance.ephemeral())
    assert not first.run_requests and "nothing ingested yet" in first.skip_message
    inbox = stage["home"] / "data" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "k8s.md").write_text("# Pod eviction\n\n" + " ".join(NEW_TOPIC * 3) + ".\n")
    due = sensor_tick(new_documents, instance)
    assert len(due.run_requests) == 1 and due.run_requests[0].tags["driftloop/trigger"] == "new_documents"
    dg.materialize([*data_assets, *data_checks], resources=data_resources(dvc_store), instance=instance, selection=[SOURCE_DOCUMENTS])
    docs = [json.loads(line)["doc_id"] for line in dvc_store.dataset_path("source_documents").read_text().splitlines()]
    assert "inbox/k8s.md" in docs
    assert not sensor_tick(new_documents, instance).run_requests


def test_corrected_answers_become_validated_training_examples(stage, dvc_store):
    log = RequestLog(stage["home"] / "data" / "serving")
    good, blank = send(log, stage["questions"][:2])
    log.feedback(request_id=good, rating=1, correction="The castle stands by the river; write to jane.doe@corp.io for maps.")
    log.feedback(request_id=blank, rating=2, correction="   ")
    dg.materialize([*data_assets, *data_checks], resources=data_resources(dvc_store), instance=stage["instance"],
                   run_config={"ops": {"data__qa_pairs": {"config": {"eval_fraction": 0.4}}, **SECTION_CONTEXTS}})
    rows = [json.loads(line) for line in dvc_store.dataset_path("instruction_dataset").read_text().splitlines()]
    learned = [r for r in rows if r["doc_id"].startswith("feedback/")]
    assert [r["qa_id"] for r in learned] == [good]
    assert learned[0]["messages"][-1]["content"].startswith("The castle stands by the river") and "[EMAIL]" in learned[0]["messages"][-1]["content"]
    assert learned[0]["messages"][1]["content"].count(stage["questions"][0]) == 1
    quarantine = list((dvc_store.quarantine_dir / "instruction_dataset").glob("*.jsonl"))
    from driftloop.data.records import stable_id

    held = [json.loads(line) for q in quarantine for line in q.read_text().splitlines()]
    assert [(r["record_id"], r["reason"]) for r in held] == [(stable_id(blank, "rag.v1"), "bad_messages")] and "empty" in held[0]["detail"]
