"""The deployment supervisor with real processes: a stdlib HTTP backend stands in for the
BentoML server, the supervisor runs as it does in production (python -m, detached)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from driftloop.serving.supervisor.client import DeployError, SupervisorClient, ensure_supervisor
from driftloop.serving.supervisor.processes import free_port

BACKEND = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port, delay, pid_dir = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
# Written before the simulated model load so the test can clean up even a backend that never got ready.
open(os.path.join(pid_dir, f"{name}.{os.getpid()}"), "w").close()
time.sleep(delay)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body, content_type="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path == "/readyz":
            self.reply(200, b"ok")
        elif self.path == "/who":
            time.sleep(0.02)
            self.reply(200, name.encode())
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                if i:
                    time.sleep(0.1)
                event = f"data: {name}-{i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        else:
            self.echo()

    def do_POST(self):
        self.echo()

    def echo(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(os.path.join(pid_dir, f"{name}.requests"), "a") as seen:
            seen.write(json.dumps({"path": self.path, "body": body.decode(), "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
        self.reply(200, json.dumps({
            "name": name, "method": self.command, "path": self.path, "body": body.decode(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode(), "application/json")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


Server(("127.0.0.1", port), Handler).serve_forever()
'''


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except OSError:
        return True


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.pid_dir = tmp_path / "pids"
        self.pid_dir.mkdir()
        self.script = tmp_path / "backend.py"
        self.script.write_text(BACKEND)
        self.port, self.control_port = free_port(), free_port()
        self.clients: list[SupervisorClient] = []
        self.client = self.start()

    def start(self) -> SupervisorClient:
        client = ensure_supervisor(self.port, self.control_port, self.state_dir, timeout_s=30)
        self.clients.append(client)
        return client

    def command(self, name: str, port: int, delay: float = 0.0) -> list[str]:
        return [sys.executable, str(self.script), name, str(port), str(delay), str(self.pid_dir)]

    def deploy(self, name: str, delay: float = 0.0, **kwargs) -> dict:
        port = free_port()
        return self.client.deploy(name, self.command(name, port, delay), port, **kwargs)

    def pids(self, name: str) -> list[int]:
        return [int(p.name.rsplit(".", 1)[1]) for p in self.pid_dir.glob(f"{name}.*") if p.suffix != ".requests"]

    def seen(self, name: str) -> list[dict]:
        path = self.pid_dir / f"{name}.requests"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def close(self) -> None:
        for client in reversed(self.clients):
            if client.alive():
                try:
                    client.shutdown(timeout_s=20)
                except Exception:
                    pass
            if client.process is not None and client.process.poll() is None:
                os.killpg(client.process.pid, signal.SIGKILL)
                client.process.wait(timeout=10)
        # Whatever the supervisor failed to stop must not outlive the test.
        for marker in self.pid_dir.iterdir():
            if marker.suffix == ".requests":
                continue
            pid = int(marker.name.rsplit(".", 1)[1])
            try:
                if str(self.script) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@pytest.fixture
def sup(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_proxies_requests_and_streams_incrementally(sup):
    result = sup.deploy("A")
    assert result["action"] == "deployed" and result["active"] == "A" and result["previous"] is None

    assert sup.request("GET", "/who")[::2] == (200, b"A")

    status, _, body = sup.request("POST", "/echo/x?q=1&r=two", body=b'{"prompt": "hi"}', headers={
        "Content-Type": "application/json", "X-Request-Id": "r-1", "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1",
    })
    seen = json.loads(body)
    assert status == 200 and seen["method"] == "POST" and seen["path"] == "/echo/x?q=1&r=two"
    assert seen["body"] == '{"prompt": "hi"}' and seen["headers"]["x-request-id"] == "r-1"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["host"] == f"127.0.0.1:{sup.port}"
    assert "x-drop-me" not in seen["headers"] and "user-agent" not in seen["headers"]

    status, headers, body = sup.request("HEAD", "/who")
    assert status == 200 and body == b"" and headers["Content-Length"] == "1"

    conn = http.client.HTTPConnection("127.0.0.1", sup.port, timeout=10)
    try:
        conn.request("GET", "/stream")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        first = response.read1(65536)
        after_first = time.monotonic()
        rest = response.read()
        waited = time.monotonic() - after_first
    finally:
        conn.close()
    assert first == b"data: A-0\n\n", f"the first event was not relayed on its own: {first!r}"
    assert rest == b"data: A-1\n\ndata: A-2\n\n"
    assert waited > 0.1, f"the rest arrived {waited:.3f} s after the first event: the body was buffered"

    status = sup.client.status()
    assert status["active"]["name"] == "A" and status["active"]["alive"] and status["in_flight"] == 0
    state = json.loads((sup.state_dir / "state.json").read_text())
    assert state["active"]["name"] == "A" and state["active"]["pid"] == status["active"]["pid"]


def test_switch_under_load_fails_no_request(sup):
    sup.deploy("A")
    (a_pid,) = sup.pids("A")
    stop = threading.Event()
    answers: list[list[bytes]] = [[] for _ in range(8)]
    failures: list[str] = []

    def hammer(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", sup.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/who")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or body not in {b"A", b"B"}:
                    failures.append(f"{response.status} {body[:200]!r}")
                mine.append(body)
            except Exception as exc:  # every kind of failure counts, and the hammer keeps going
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", sup.port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=hammer, args=(mine,), daemon=True) for mine in answers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        result = sup.deploy("B", delay=1.5, drain_timeout_s=10)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)

    total = sum(len(mine) for mine in answers)
    assert not failures, f"{len(failures)} of {total + len(failures)} requests failed: {failures[:5]}"
    assert result["action"] == "deployed" and result["previous"] == "A" and result["drained"]
    assert result["seconds"] >= 1.5
    for mine in answers:
        # Each thread's requests are sequential: once one reached B, none may go back to A.
        assert mine and mine[0] == b"A" and mine[-1] == b"B", f"answers did not switch from A to B ({total} requests)"
        assert b"A" not in mine[mine.index(b"B"):], f"a request reached A after the switch ({total} requests)"
    assert _gone(a_pid), f"A (pid {a_pid}) still runs after the deploy returned ({total} requests)"
    assert sup.client.status()["active"]["name"] == "B"


def test_failed_deploy_keeps_the_active_backend(sup):
    sup.deploy("A")
    port = free_port()
    crash = [sys.executable, "-c", "import sys; print('weights file is missing', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(DeployError) as failed:
        sup.client.deploy("broken", crash, port, ready_timeout_s=20)
    message = str(failed.value)
    assert "broken did not become ready" in message and "exited with code 3" in message
    assert "weights file is missing" in message
    assert sup.request("GET", "/who")[::2] == (200, b"A")

    with pytest.raises(DeployError, match=r"slow did not become ready: /readyz did not answer 200 within 1 s"):
        sup.deploy("slow", delay=60, ready_timeout_s=1)
    (slow_pid,) = sup.pids("slow")
    assert _wait_gone(slow_pid, 5), "the backend that never got ready was left running"
    assert sup.request("GET", "/who")[::2] == (200, b"A")

    with pytest.raises(DeployError, match="another process is listening"):
        sup.client.deploy("squatter", sup.command("squatter", sup.port), sup.port)

    audit = [json.loads(line) for line in (sup.state_dir / "events.jsonl").read_text().splitlines()]
    failed_names = [entry["name"] for entry in audit if entry["action"] == "failed"]
    assert failed_names == ["broken", "slow", "squatter"]
    assert "weights file is missing" in audit[1]["error"] and audit[1]["previous"] == "A"
    assert sup.client.status()["active"]["name"] == "A"


def test_redeploying_the_active_name_is_unchanged(sup):
    first = sup.deploy("A")
    again = sup.deploy("A")
    assert again["action"] == "unchanged" and again["active"] == "A" and again["pid"] == first["pid"]
    assert len(sup.pids("A")) == 1, "an unchanged deploy started another process"
    history = sup.client.status()["history"]
    assert [entry["action"] for entry in history] == ["deployed", "unchanged"]


def test_no_backend_and_dead_backend_answers(sup):
    status, headers, body = sup.request("GET", "/v1/models")
    assert status == 503 and json.loads(body) == {"error": "no model is deployed"}
    assert headers["Content-Type"].startswith("application/json")

    result = sup.deploy("A")
    os.killpg(result["pid"], signal.SIGKILL)
    assert _wait_gone(result["pid"])
    status, _, body = sup.request("GET", "/who")
    assert status == 502 and "A" in json.loads(body)["error"] and json.loads(body)["backend"] == "A"


def test_restarted_supervisor_adopts_the_running_backend(sup):
    result = sup.deploy("A")
    killed = sup.client.process
    killed.kill()
    killed.wait(timeout=10)
    assert not _gone(result["pid"]), "a crashed supervisor took its backend down"

    restarted = sup.start()
    assert restarted.process is not None and restarted.process.pid != killed.pid
    active = restarted.status()["active"]
    assert active["name"] == "A" and active["pid"] == result["pid"] and active["adopted"]
    assert sup.request("GET", "/who")[::2] == (200, b"A")

    restarted.process.send_signal(signal.SIGTERM)
    assert restarted.process.wait(timeout=20) == 0
    assert _wait_gone(result["pid"]), "SIGTERM to the supervisor left its backend running"
    assert json.loads((sup.state_dir / "state.json").read_text())["active"] is None


def test_shadow_answers_a_copy_of_inference_requests_and_serves_none(sup):
    sup.deploy("champion")
    port = free_port()
    assert sup.client.shadow("challenger", sup.command("challenger", port), port)["action"] == "shadowing"
    json_body = {"Content-Type": "application/json"}
    status, _, body = sup.request("POST", "/answer", b'{"question": "q1"}', json_body)
    reply = json.loads(body)
    assert status == 200 and reply["name"] == "champion"
    request_id = reply["headers"]["x-driftloop-request-id"]
    # Only inference calls are copied: feedback and reads belong to the serving version alone.
    sup.request("POST", "/feedback", b'{"rating": 5}', json_body)
    sup.request("GET", "/who")
    deadline = time.monotonic() + 10
    while not sup.seen("challenger") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    copies = sup.seen("challenger")
    assert [c["path"] for c in copies] == ["/answer"], copies
    assert copies[0]["body"] == '{"question": "q1"}' and copies[0]["headers"]["x-driftloop-request-id"] == request_id
    # A caller's own well-formed id is kept for both.
    mine = "req-" + "a1" * 10
    status, _, body = sup.request("POST", "/answer", b'{"question": "q2"}', {**json_body, "X-Driftloop-Request-Id": mine})
    assert json.loads(body)["headers"]["x-driftloop-request-id"] == mine
    shadow = sup.client.status()["shadow"]
    assert shadow["name"] == "challenger" and shadow["mirrored"] >= 1 and shadow["failed"] == 0

    # A dead shadow never costs the client anything.
    os.killpg(shadow["pid"], signal.SIGKILL)
    assert _wait_gone(shadow["pid"])
    assert all(sup.request("POST", "/answer", b'{"question": "q3"}', json_body)[0] == 200 for _ in range(3))
    assert sup.client.stop_shadow()["previous"] == "challenger" and sup.client.status()["shadow"] is None

    # Promoting the shadowed version ends the shadow: it now serves.
    port = free_port()
    sup.client.shadow("challenger-2", sup.command("challenger-2", port), port)
    sup.deploy("challenger-2")
    status = sup.client.status()
    assert status["active"]["name"] == "challenger-2" and status["shadow"] is None
    with pytest.raises(DeployError, match="a shadow must be another version"):
        sup.client.shadow("challenger-2", sup.command("challenger-2", free_port()), free_port())


def test_canary_takes_a_sticky_share_is_promoted_or_rolled_back_and_never_fails_a_request(sup):
    sup.deploy("stable")
    port = free_port()
    started = sup.client.canary("candidate", sup.command("candidate", port), port, share=0.3, model_version="lora-new",
                                baseline_version="lora-old", policy={"min_requests": 20})
    assert started["action"] == "canary" and started["baseline"] == "stable"
    json_body = {"Content-Type": "application/json"}

    def answer(user: str) -> str:
        status, _, body = sup.request("POST", "/answer", b'{"question": "q"}', {**json_body, "X-Driftloop-User": user})
        assert status == 200
        return json.loads(body)["name"]

    sides = {user: answer(user) for user in (f"user-{i}" for i in range(200))}
    # Each caller stays where the hash put it, and about the share goes to the canary.
    assert all(answer(user) == side for user, side in list(sides.items())[:40])
    share = sum(side == "candidate" for side in sides.values()) / len(sides)
    assert 0.2 < share < 0.4, share
    # Only inference calls are split: reads and feedback belong to the serving version.
    assert all(sup.request("GET", "/who", headers={"X-Driftloop-User": u})[2] == b"stable" for u, s in sides.items() if s == "candidate")
    canary = sup.client.status()["canary"]
    assert canary["model_version"] == "lora-new" and canary["policy"] == {"min_requests": 20}
    assert canary["sides"]["canary"]["requests"] + canary["sides"]["baseline"]["requests"] == 240
    assert canary["sides"]["canary"]["failures"] == 0

    # A canary that dies costs its callers nothing: the serving version answers, the failure is counted.
    os.killpg(canary["pid"], signal.SIGKILL)
    assert _wait_gone(canary["pid"])
    on_canary = [u for u, s in sides.items() if s == "candidate"][:5]
    assert [answer(u) for u in on_canary] == ["stable"] * 5
    assert sup.client.status()["canary"]["sides"]["canary"]["failures"] == 5
    with pytest.raises(DeployError, match="not running"):
        sup.client.end_canary("candidate", promote=True)
    assert sup.client.status()["canary"] is None and sup.client.status()["active"]["name"] == "stable"

    # A rollback stops the canary; a promotion switches everything to it and stops the old version.
    port = free_port()
    sup.client.canary("bad", sup.command("bad", port), port, share=0.5, model_version="lora-bad", baseline_version="lora-old")
    bad_pid = sup.client.status()["canary"]["pid"]
    with pytest.raises(DeployError, match="no canary other"):
        sup.client.end_canary("other", promote=True)
    assert sup.client.end_canary("bad", promote=False)["action"] == "rolled_back"
    assert _wait_gone(bad_pid) and all(answer(u) == "stable" for u in list(sides)[:20])
    port = free_port()
    sup.client.canary("good", sup.command("good", port), port, share=0.5, model_version="lora-good", baseline_version="lora-old")
    stable_pid = sup.client.status()["active"]["pid"]
    # A restarted supervisor adopts the canary with its route and counts.
    answer("user-1")
    time.sleep(1.5)  # the counts are written to state.json once a second
    sup.client.process.kill()
    sup.client.process.wait(timeout=10)
    sup.client = sup.start()
    adopted = sup.client.status()["canary"]
    assert adopted["name"] == "good" and adopted["adopted"] and adopted["share"] == 0.5
    assert sum(side["requests"] for side in adopted["sides"].values()) == 1
    promoted = sup.client.end_canary("good", promote=True)
    assert promoted["action"] == "promoted" and promoted["previous"] == "stable"
    assert _wait_gone(stable_pid) and {answer(u) for u in list(sides)[:20]} == {"good"}
    actions = [e["action"] for e in sup.client.status()["history"]]
    assert actions.count("canary") == 3 and "canary_rolled_back" in actions and actions[-1] == "canary_promoted"
