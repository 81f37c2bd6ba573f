"""The supervisor's client, for callers (Dagster assets, make targets, benchmarks): deploy,
shadow, status and shutdown over the control API, and ensure_supervisor, which starts a
supervisor when none answers. Standard library only, so importing it is cheap."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from driftloop.serving.supervisor.processes import read_tail


class DeployError(RuntimeError):
    """The supervisor refused or failed a deploy; whatever was active before still serves."""


def _decode(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw.decode("utf-8", errors="replace").strip()}
    return value if isinstance(value, dict) else {"value": value}


class SupervisorClient:
    def __init__(self, control_url: str) -> None:
        self.control_url = control_url.rstrip("/")
        # Set by ensure_supervisor when it started the supervisor itself.
        self.process: subprocess.Popen | None = None
        # The control API is on loopback: an HTTP(S)_PROXY in the environment must not capture it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"SupervisorClient({self.control_url!r})"

    def _call(self, method: str, path: str, payload: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            self.control_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _decode(exc.read())

    def deploy(
        self, name: str, command: list[str], port: int, ready_path: str = "/readyz", env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None, ready_timeout_s: float = 300, drain_timeout_s: float = 30,
    ) -> dict:
        """Start `command` as backend `name` on `port` and switch traffic to it once ready.

        Returns the supervisor's answer ({"action": "deployed" | "unchanged", "active", "previous",
        "seconds", ...}); raises DeployError when the backend failed to come up (the previous
        one keeps serving) or the request was refused."""
        if isinstance(command, str | bytes):
            # A string would be split into one argument per character; the supervisor runs no shell.
            raise TypeError(f"command must be an argv list, not {command!r}; use shlex.split for a shell-style line")
        payload = {
            "name": name, "command": [os.fspath(arg) for arg in command], "port": port, "ready_path": ready_path,
            "env": dict(env or {}), "cwd": str(cwd) if cwd is not None else None,
            "ready_timeout_s": ready_timeout_s, "drain_timeout_s": drain_timeout_s,
        }
        # The answer comes only after readiness, drain and stop; a deploy queued behind
        # another one waits longer still, so allow for all of it.
        timeout = ready_timeout_s + drain_timeout_s + 120
        try:
            status, body = self._call("POST", "/deploy", payload, timeout=timeout)
        except TimeoutError as exc:
            raise DeployError(f"no answer from the supervisor within {timeout:g} s for {name}; "
                              "the deploy may still finish, see status()") from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DeployError(f"lost the supervisor at {self.control_url} while deploying {name}: {reason}") from exc
        if status != 200:
            raise DeployError(body.get("error") or f"deploy of {name} answered HTTP {status}: {body}")
        return body

    def _start_beside(self, role: str, name: str, command: list[str], port: int, ready_path: str, env: dict[str, str] | None,
                      cwd: str | os.PathLike | None, ready_timeout_s: float, **route) -> dict:
        payload = {"name": name, "command": [os.fspath(arg) for arg in command], "port": port, "ready_path": ready_path,
                   "env": dict(env or {}), "cwd": str(cwd) if cwd is not None else None, "ready_timeout_s": ready_timeout_s, **route}
        return self._checked("POST", f"/{role}", payload, f"starting {role} {name}", timeout=ready_timeout_s + 120)

    def _checked(self, method: str, path: str, payload: dict | None, what: str, timeout: float) -> dict:
        try:
            status, body = self._call(method, path, payload, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise DeployError(f"lost the supervisor at {self.control_url} while {what}: {exc}") from exc
        if status != 200:
            raise DeployError(body.get("error") or f"{what} answered HTTP {status}: {body}")
        return body

    def shadow(self, name: str, command: list[str], port: int, ready_path: str = "/readyz", env: dict[str, str] | None = None,
               cwd: str | os.PathLike | None = None, ready_timeout_s: float = 300) -> dict:
        """Start `command` as the shadow backend; it answers copies of live requests and serves none."""
        return self._start_beside("shadow", name, command, port, ready_path, env, cwd, ready_timeout_s)

    def canary(self, name: str, command: list[str], port: int, *, share: float, model_version: str, baseline_version: str,
               policy: dict | None = None, ready_path: str = "/readyz", env: dict[str, str] | None = None,
               cwd: str | os.PathLike | None = None, ready_timeout_s: float = 300) -> dict:
        """Start `command` beside the active backend and send it `share` of inference traffic,
        each caller kept on one side (driftloop.serving.canary)."""
        return self._start_beside("canary", name, command, port, ready_path, env, cwd, ready_timeout_s, share=share,
                                  model_version=model_version, baseline_version=baseline_version, policy=policy or {})

    def end_canary(self, name: str, promote: bool) -> dict:
        """Promote canary `name` to all traffic, or roll it back; refused unless `name` is the running canary."""
        query = "?" + urllib.parse.urlencode({"name": name})
        return self._checked("POST" if promote else "DELETE", ("/canary/promote" if promote else "/canary") + query, None,
                             f"ending canary {name}", timeout=180)

    def stop_shadow(self) -> dict:
        status, body = self._call("DELETE", "/shadow", timeout=120)
        if status != 200:
            raise DeployError(body.get("error") or f"stopping the shadow answered HTTP {status}: {body}")
        return body

    def status(self) -> dict:
        status, body = self._call("GET", "/status")
        if status != 200:
            raise RuntimeError(f"{self.control_url}/status answered HTTP {status}: {body}")
        return body

    def _status_or_none(self) -> dict | None:
        try:
            status, body = self._call("GET", "/status", timeout=3.0)
        except (OSError, http.client.HTTPException):
            return None
        return body if status == 200 and "active" in body and "supervisor" in body else None

    def alive(self) -> bool:
        return self._status_or_none() is not None

    def shutdown(self, timeout_s: float = 60.0) -> dict:
        """Stop the active backend and the supervisor; returns once the control port is closed."""
        try:
            _, body = self._call("POST", "/shutdown", timeout=timeout_s)
        except (OSError, http.client.HTTPException):
            # The supervisor may close the connection on its way out before the answer is read.
            body = {}
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the supervisor at {self.control_url} still answers {timeout_s:g} s after /shutdown")
            time.sleep(0.05)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=max(deadline - time.monotonic(), 1.0))
        return body


def ensure_supervisor(
    port: int, control_port: int, state_dir: Path, python: str = sys.executable, timeout_s: float = 30,
    host: str = "127.0.0.1",
) -> SupervisorClient:
    """A client for the supervisor on `control_port`, starting one (detached) if none answers."""
    state_dir = Path(state_dir).resolve()
    client = SupervisorClient(f"http://127.0.0.1:{control_port}")

    def check(running: dict) -> SupervisorClient:
        info = running.get("supervisor") or {}
        # Deploying into a supervisor that serves another port or state dir would look like success.
        if info.get("port") != port or Path(info.get("state_dir", "")).resolve() != state_dir:
            raise RuntimeError(f"control port {control_port} belongs to a supervisor for port {info.get('port')} "
                               f"and {info.get('state_dir')}, not port {port} and {state_dir}")
        return client

    running = client._status_or_none()
    if running is not None:
        return check(running)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "supervisor.log"
    with open(log_path, "ab") as output:
        offset = output.seek(0, os.SEEK_END)
        process = subprocess.Popen(
            [python, "-m", "driftloop.serving.supervisor", "--port", str(port), "--control-port", str(control_port),
             "--state-dir", str(state_dir), "--host", host],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    client.process = process
    deadline = time.monotonic() + timeout_s
    while True:
        running = client._status_or_none()
        if running is not None:
            return check(running)
        code = process.poll()
        if code is not None:
            # Lost a race with another caller starting the same supervisor: theirs is fine too.
            running = client._status_or_none()
            if running is not None:
                client.process = None
                return check(running)
            raise RuntimeError(f"the supervisor exited with code {code} before answering on port {control_port}:\n"
                               f"{read_tail(log_path, start=offset)}")
        if time.monotonic() >= deadline:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            raise RuntimeError(f"the supervisor did not answer on port {control_port} within {timeout_s:g} s:\n"
                               f"{read_tail(log_path, start=offset)}")
        time.sleep(0.1)
