"""Local zero-downtime deployment supervisor.

A long-lived process owns a stable HTTP port and forwards every request to the active
backend (a BentoML model server, or any HTTP server). A deploy starts the new backend next
to the old one, waits until it is ready, switches traffic in one step, lets the old
backend finish the requests it already has, and only then stops it: clients of the
stable port never see a failed request.

    python -m driftloop.serving.supervisor --port 3001 --control-port 3002 --state-dir DIR

The control API listens on loopback only (POST /deploy, GET /status, POST /shutdown,
POST and DELETE /shadow: a backend that gets a copy of every inference request and
serves none, see driftloop.serving.shadow).
DIR holds state.json (the active backend, so a restarted supervisor adopts it instead
of taking the model down), deployments.jsonl (the audit trail), logs/<name>.log (each
backend's output) and supervisor.log (when started by ensure_supervisor).

The client half of this module (SupervisorClient, ensure_supervisor, free_port) uses
only the standard library, so callers such as Dagster assets import it cheaply; aiohttp
is imported only by the supervisor process itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import http.client
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.serving.shadow import REQUEST_ID_HEADER, ShadowMirror, new_request_id, request_id_from

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

log = logging.getLogger("driftloop.serving.supervisor")

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Names become log file names, so they must not carry path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # bento tags are name:version
DEPLOY_FIELDS = {"name", "command", "port", "ready_path", "env", "cwd", "ready_timeout_s", "drain_timeout_s"}
LOG_TAIL_CHARS = 2000
HISTORY_LIMIT = 200
# Shorter than uvicorn's default 5 s keep-alive (BentoML serves with uvicorn), so the proxy
# always drops an idle pooled connection before the backend does. Otherwise a request can be
# written onto a connection the backend is closing; aiohttp retries that only for idempotent
# methods, and inference calls are POSTs.
UPSTREAM_KEEPALIVE_S = 2.0
# How long a restarted supervisor keeps probing a recorded backend before giving up on it: a
# busy model server can miss one probe, and requests queue in the listen backlog meanwhile.
ADOPT_PROBE_S = 5.0
EXIT_DRAIN_S = 10.0


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _read_tail(path: Path, start: int = 0, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, size - limit))
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None without procfs."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot: with the pid it names one process
    for good, where the pid alone may have been reused after a reboot or a long uptime."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan whose reaper never calls wait() stays a zombie: it still answers kill(0) but
    # will never serve again.
    fields = _proc_stat(pid)
    return not (fields and fields[0] in {"Z", "X"})


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    # Zombies stay group members until reaped, and in a container whose init never reaps
    # they stay forever; only a live member can still hold the port or the GPU.
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in {"Z", "X"}:
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _write_json_atomic(path: Path, payload: dict) -> None:
    # A crash mid-write must leave either the old or the new state, never half a file that
    # would stop the next supervisor from adopting the running backend.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------
# Supervisor process
# --------------------------------------------------------------------------------------


class _StartupError(RuntimeError):
    pass


class _BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class DeploySpec:
    name: str
    command: list[str]
    port: int
    ready_path: str = "/readyz"
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ready_timeout_s: float = 300.0
    drain_timeout_s: float = 30.0

    @classmethod
    def parse(cls, body: Any) -> DeploySpec:
        if not isinstance(body, dict):
            raise _BadRequest("the deploy body must be a JSON object")
        # A misspelt option silently falling back to its default (a 300 s timeout instead of
        # the intended 30) is worse than a refused deploy.
        unknown = sorted(set(body) - DEPLOY_FIELDS)
        if unknown:
            raise _BadRequest(f"unknown deploy fields: {', '.join(unknown)}")
        name = body.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise _BadRequest("name must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
                              "starting with a letter or digit")
        command = body.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(arg, str) for arg in command):
            raise _BadRequest("command must be a non-empty list of strings (an argv, not a shell line)")
        port = body.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise _BadRequest("port must be an integer between 1 and 65535")
        ready_path = body.get("ready_path", "/readyz")
        if not isinstance(ready_path, str) or not ready_path.startswith("/"):
            raise _BadRequest("ready_path must be a path starting with '/'")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise _BadRequest("env must map strings to strings")
        cwd = body.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
            raise _BadRequest(f"cwd {cwd!r} is not a directory")
        timeouts = {}
        for key, default in (("ready_timeout_s", 300.0), ("drain_timeout_s", 30.0)):
            value = body.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise _BadRequest(f"{key} must be a non-negative number")
            timeouts[key] = float(value)
        return cls(name=name, command=command, port=port, ready_path=ready_path, env=env, cwd=cwd, **timeouts)


@dataclass(eq=False)
class Backend:
    name: str
    port: int
    pid: int
    command: list[str]
    started_at: str
    ready_path: str
    # None for a backend adopted from a previous supervisor: it is not our child, so it is
    # watched through its pid (and start time) instead of waitpid.
    process: subprocess.Popen | None = None
    start_ticks: int | None = None
    log_path: str | None = None
    in_flight: int = 0
    exit_reported: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def adopted(self) -> bool:
        return self.process is None

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if not _pid_alive(self.pid):
            return False
        return self.start_ticks is None or _start_ticks(self.pid) == self.start_ticks

    def exit_description(self) -> str:
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return "exited"
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def record(self) -> dict:
        return {
            "name": self.name, "port": self.port, "pid": self.pid, "command": self.command,
            "started_at": self.started_at, "ready_path": self.ready_path, "start_ticks": self.start_ticks,
            "log": self.log_path,
        }

    def describe(self) -> dict:
        return {
            "name": self.name, "port": self.port, "pid": self.pid, "started_at": self.started_at,
            "command": self.command, "ready_path": self.ready_path, "alive": self.alive(),
            "adopted": self.adopted, "in_flight": self.in_flight, "log": self.log_path,
        }


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _upstream_headers(request: web.Request) -> Any:
    from multidict import CIMultiDict

    named_by_connection = {
        token.strip().lower() for value in request.headers.getall("Connection", ()) for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        lowered = key.lower()
        # The body is already read in full: aiohttp sets its length, and a 100-continue
        # handshake with the backend would only add a round trip.
        if lowered in HOP_BY_HOP or lowered in named_by_connection or lowered in {"content-length", "expect"}:
            continue
        headers.add(key, value)
    if request.remote:
        earlier = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        headers["X-Forwarded-For"] = f"{earlier}, {request.remote}" if earlier else request.remote
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    if "Host" in request.headers:
        headers.setdefault("X-Forwarded-Host", request.headers["Host"])
    return headers


class Supervisor:
    def __init__(self, *, host: str, port: int, control_port: int, state_dir: Path, stop_grace_s: float = 10.0) -> None:
        self.host, self.port, self.control_port = host, port, control_port
        self.state_dir = Path(state_dir).resolve()
        self.logs_dir = self.state_dir / "logs"
        self.state_path = self.state_dir / "state.json"
        self.audit_path = self.state_dir / "deployments.jsonl"
        self.stop_grace_s = stop_grace_s
        self.started_at = _now()
        self.active: Backend | None = None
        self.shadow = ShadowMirror()
        self.draining: list[Backend] = []
        self.history: deque[dict] = deque(maxlen=HISTORY_LIMIT)
        self._closing = False
        self._deploy_lock = asyncio.Lock()
        self._deploy_tasks: set[asyncio.Task] = set()
        self._stop_requested = asyncio.Event()
        self._backends_stopped = asyncio.Event()
        self._stopped_names: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._lock_file: Any = None

    # ---- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        import aiohttp
        from aiohttp import web

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._take_state_dir_lock()
        # Bound before adopting: a second supervisor for the same ports fails here without
        # touching the backend the first one serves, and requests that arrive while we adopt
        # wait in the backlog instead of being refused.
        proxy_sock = _listen(self.host, self.port)
        control_sock = _listen("127.0.0.1", self.control_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested.set)
        self._load_history()

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=UPSTREAM_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            # Relay bytes as the backend sent them; compression and content type are the backend's business.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # The session is shared by all clients: a cookie jar would hand one user's cookies to the next.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), cookie_jar=aiohttp.DummyCookieJar(),
        )
        runners: list[web.AppRunner] = []
        monitor: asyncio.Task | None = None
        try:
            await self._adopt()
            proxy_app = web.Application(client_max_size=256 * 1024 * 1024)
            proxy_app.router.add_route("*", "/{tail:.*}", self._proxy)
            control_app = web.Application()
            control_app.router.add_post("/deploy", self._handle_deploy)
            control_app.router.add_get("/status", self._handle_status)
            control_app.router.add_post("/shutdown", self._handle_shutdown)
            control_app.router.add_post("/shadow", self._handle_shadow)
            control_app.router.add_delete("/shadow", self._handle_shadow_stop)
            # No access logs: the proxy would log every inference call and the control API every
            # status poll; deploys and failures are logged where they happen.
            for app, sock in ((proxy_app, proxy_sock), (control_app, control_sock)):
                runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
                await runner.setup()
                runners.append(runner)
                await web.SockSite(runner, sock, backlog=1024).start()
            monitor = asyncio.create_task(self._monitor())
            log.info("supervisor pid %d: proxy on %s:%d, control on 127.0.0.1:%d, state in %s, active %s",
                     os.getpid(), self.host, self.port, self.control_port, self.state_dir,
                     self.active.name if self.active else "none")
            await self._stop_requested.wait()
            await self._stop_everything()
        finally:
            if monitor is not None:
                monitor.cancel()
            for runner in reversed(runners):
                await runner.cleanup()
            await self._session.close()
            await self._probe_session.close()
            for sock in (proxy_sock, control_sock):
                sock.close()
        log.info("supervisor stopped")

    def _take_state_dir_lock(self) -> None:
        # Two supervisors on one state dir would each believe they own the recorded backend.
        self._lock_file = open(self.state_dir / "supervisor.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise _StartupError(f"another supervisor is already using {self.state_dir}") from exc

    async def _stop_everything(self) -> None:
        self._closing = True
        for task in list(self._deploy_tasks):
            task.cancel()
        await asyncio.gather(*self._deploy_tasks, return_exceptions=True)
        backends = [b for b in [self.active, self.shadow.backend, *self.draining] if b is not None]
        self.shadow.backend = None
        # Requests already proxied get a short chance to finish before their backend goes away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(b.idle.wait() for b in backends)), EXIT_DRAIN_S)
        await asyncio.gather(*(self._stop_backend(b) for b in backends))
        stopped = self.active
        self.active = None
        self.draining.clear()
        self._write_state()
        if stopped is not None:
            self._record("stopped", stopped.name, None)
        self._stopped_names = [b.name for b in backends]
        self._backends_stopped.set()

    # ---- state -----------------------------------------------------------------------

    def _write_state(self) -> None:
        _write_json_atomic(self.state_path, {
            "active": self.active.record() if self.active else None,
            "updated_at": _now(),
            "supervisor_pid": os.getpid(),
        })

    def _record(self, action: str, name: str, previous: str | None, **extra: Any) -> dict:
        entry = {"at": _now(), "action": action, "name": name, "previous": previous, **extra}
        self.history.append(entry)
        with open(self.audit_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def _load_history(self) -> None:
        try:
            lines = _read_tail(self.audit_path, limit=256 * 1024).splitlines()
        except OSError:
            return
        for line in lines[-HISTORY_LIMIT:]:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    self.history.append(entry)

    async def _adopt(self) -> None:
        try:
            recorded = json.loads(self.state_path.read_text()).get("active")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return
        if not recorded:
            return
        try:
            backend = Backend(
                name=recorded["name"], port=int(recorded["port"]), pid=int(recorded["pid"]),
                command=list(recorded.get("command") or []), started_at=recorded.get("started_at") or "",
                ready_path=recorded.get("ready_path") or "/readyz", start_ticks=recorded.get("start_ticks"),
                log_path=recorded.get("log"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed active backend in %s: %s", self.state_path, exc)
            return
        verified = backend.start_ticks is not None and _start_ticks(backend.pid) == backend.start_ticks
        if not backend.alive():
            log.info("recorded backend %s (pid %d) is gone; starting with no model", backend.name, backend.pid)
            self._write_state()
            return
        deadline = time.monotonic() + ADOPT_PROBE_S
        while not await self._probe(backend):
            if time.monotonic() >= deadline or not backend.alive():
                if verified and backend.alive():
                    # Our own orphan (same pid and start time) that no longer serves: left
                    # running it would hold its port forever with nobody to stop it.
                    log.warning("recorded backend %s (pid %d) is not ready; stopping it", backend.name, backend.pid)
                    await self._stop_backend(backend)
                else:
                    log.warning("recorded backend %s (pid %d) is not ready and cannot be proven ours; leaving it alone",
                                backend.name, backend.pid)
                self._write_state()
                return
            await asyncio.sleep(0.25)
        self.active = backend
        self._write_state()
        self._record("adopted", backend.name, None, pid=backend.pid, port=backend.port)
        log.info("adopted running backend %s (pid %d, port %d)", backend.name, backend.pid, backend.port)

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            backend = self.active
            if backend is not None and not backend.exit_reported and not backend.alive():
                backend.exit_reported = True
                reason = backend.exit_description()
                log.error("active backend %s (pid %d) %s; requests get 502 until the next deploy",
                          backend.name, backend.pid, reason)
                self._record("exited", backend.name, None, reason=reason)

    # ---- processes -------------------------------------------------------------------

    async def _probe(self, backend: Backend, timeout_s: float = 5.0) -> bool:
        import aiohttp

        url = f"http://127.0.0.1:{backend.port}{backend.ready_path}"
        try:
            async with self._probe_session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    def _spawn(self, spec: DeploySpec) -> tuple[Backend, int]:
        log_path = self.logs_dir / f"{spec.name}.log"
        with open(log_path, "ab") as output:
            output.write(f"\n=== {_now()} starting {spec.name} on port {spec.port}: {shlex.join(spec.command)}\n".encode())
            output.flush()
            offset = output.tell()
            # Its own session and process group: a signal to the supervisor's terminal or group
            # does not reach it, and stopping it reaches every worker it forks.
            process = subprocess.Popen(
                spec.command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=spec.cwd, env={**os.environ, **spec.env}, start_new_session=True, close_fds=True,
            )
        backend = Backend(
            name=spec.name, port=spec.port, pid=process.pid, command=list(spec.command), started_at=_now(),
            ready_path=spec.ready_path, process=process, start_ticks=_start_ticks(process.pid), log_path=str(log_path),
        )
        return backend, offset

    async def _wait_ready(self, backend: Backend, timeout_s: float) -> str | None:
        """None once the backend answers 200 on its ready path, else why it never will."""
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while True:
            if not backend.alive():
                return f"the process {backend.exit_description()} before {backend.ready_path} answered 200"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"{backend.ready_path} did not answer 200 within {timeout_s:g} s"
            if await self._probe(backend, timeout_s=min(5.0, max(remaining, 0.1))):
                return None
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 1.5, 0.5)

    def _leader_alive(self, backend: Backend) -> bool:
        if backend.process is not None:
            return backend.process.poll() is None
        return _pid_alive(backend.pid)

    def _group_id(self, backend: Backend) -> int | None:
        """The process group to signal, or None when signalling could hit an unrelated process."""
        # start_new_session made the leader's pid the group id.
        if backend.process is not None:
            return backend.pid
        if backend.start_ticks is None:
            # Without procfs an adopted pid cannot be verified; it answered on its port when adopted.
            return backend.pid if _pid_alive(backend.pid) else None
        # A different start time means the pid now belongs to an unrelated process.
        return backend.pid if _start_ticks(backend.pid) == backend.start_ticks else None

    async def _stop_backend(self, backend: Backend) -> None:
        pgid = self._group_id(backend)
        if pgid is None:
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        # The group outlives its leader when workers linger; wait for all of it.
        while self._leader_alive(backend) or _group_alive(pgid):
            if time.monotonic() >= deadline:
                log.warning("backend %s (pid %d) ignored SIGTERM for %g s; killing it",
                            backend.name, backend.pid, self.stop_grace_s)
                _signal_group(pgid, signal.SIGKILL)
                kill_deadline = time.monotonic() + 5.0
                while self._leader_alive(backend) and time.monotonic() < kill_deadline:
                    await asyncio.sleep(0.05)
                break
            await asyncio.sleep(0.05)
        log.info("stopped backend %s (pid %d, %s)", backend.name, backend.pid, backend.exit_description())

    def _kill_now(self, backend: Backend) -> None:
        # Used on cancellation, where awaiting a polite shutdown is no longer possible.
        log.warning("killing %s (pid %d): its deploy was abandoned", backend.name, backend.pid)
        _signal_group(backend.pid, signal.SIGKILL)
        if backend.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                backend.process.wait(timeout=5)

    # ---- deploy ----------------------------------------------------------------------

    def _fail(self, spec: DeploySpec, status: int, error: str, started: float) -> tuple[int, dict]:
        previous = self.active.name if self.active else None
        self._record("failed", spec.name, previous, error=error, port=spec.port, seconds=round(time.monotonic() - started, 3))
        log.error("deploy of %s failed: %s", spec.name, error)
        return status, {"error": error, "active": previous}

    async def _start(self, spec: DeploySpec, started: float) -> tuple[Backend | None, float | tuple[int, dict]]:
        """Spawn `spec` and wait until it is ready: (backend, seconds to ready), or (None, the failure answer)."""
        if _port_in_use(spec.port):
            # Readiness would be judged on whatever already listens there.
            return None, self._fail(spec, 409, f"{spec.name} cannot use port {spec.port}: another process is listening on it",
                                    started)
        try:
            backend, log_offset = self._spawn(spec)
        except OSError as exc:
            return None, self._fail(spec, 502, f"{spec.name} did not become ready: it could not be started: {exc}", started)
        spawned = time.monotonic()
        log.info("started %s (pid %d) on port %d; waiting for %s", spec.name, backend.pid, spec.port, spec.ready_path)
        try:
            reason = await self._wait_ready(backend, spec.ready_timeout_s)
            if reason is not None:
                await self._stop_backend(backend)
        except BaseException as exc:
            self._kill_now(backend)
            if isinstance(exc, asyncio.CancelledError):
                self._fail(spec, 503, f"{spec.name} was not deployed: the supervisor is shutting down", started)
            raise
        if reason is not None:
            tail = _read_tail(Path(backend.log_path), start=log_offset)
            error = f"{spec.name} did not become ready: {reason}"
            if tail:
                error += f"\n--- end of {backend.log_path} ---\n{tail}"
            return None, self._fail(spec, 502, error, started)
        return backend, round(time.monotonic() - spawned, 3)

    async def deploy(self, spec: DeploySpec) -> tuple[int, dict]:
        started = time.monotonic()
        async with self._deploy_lock:
            if self._closing:
                return 503, {"error": "the supervisor is shutting down"}
            current = self.active
            if current is not None and current.name == spec.name and current.alive():
                self._record("unchanged", spec.name, None, pid=current.pid, port=current.port)
                return 200, {"action": "unchanged", "active": spec.name, "previous": None,
                             "seconds": round(time.monotonic() - started, 3), "pid": current.pid, "port": current.port}
            if current is not None and current.port == spec.port and current.alive():
                return self._fail(spec, 409, f"{spec.name} cannot use port {spec.port}: the active backend {current.name} "
                                  "serves there, and a zero-downtime switch needs both running at once", started)
            backend, ready_s = await self._start(spec, started)
            if backend is None:
                return ready_s

            previous = self.active
            # One assignment on the event loop: every request proxied from here on goes to the
            # new backend, every request already counted against the old one finishes there.
            self.active = backend
            self._write_state()
            log.info("switched to %s after %.2f s%s", spec.name, ready_s, f" (was {previous.name})" if previous else "")
            drained = True
            if previous is not None:
                self.draining.append(previous)
                try:
                    await asyncio.wait_for(previous.idle.wait(), spec.drain_timeout_s)
                except TimeoutError:
                    drained = False
                    log.warning("%s still had %d requests in flight after %g s; stopping it anyway",
                                previous.name, previous.in_flight, spec.drain_timeout_s)
                await self._stop_backend(previous)
                self.draining.remove(previous)
            shadow = self.shadow.backend
            if shadow is not None and shadow.name == spec.name:
                # The shadowed challenger now serves; mirroring it to itself would only double its load.
                self.shadow.backend = None
                await self._stop_backend(shadow)
                self._record("shadow_stopped", shadow.name, None, reason="promoted to active")
            seconds = round(time.monotonic() - started, 3)
            previous_name = previous.name if previous else None
            self._record("deployed", spec.name, previous_name, pid=backend.pid, port=backend.port,
                         seconds=seconds, ready_s=ready_s, drained=drained)
            return 200, {"action": "deployed", "active": spec.name, "previous": previous_name, "seconds": seconds,
                         "ready_s": ready_s, "drained": drained, "pid": backend.pid, "port": backend.port}

    async def set_shadow(self, spec: DeploySpec) -> tuple[int, dict]:
        """Start `spec` as the shadow: once ready it gets a copy of every inference request."""
        started = time.monotonic()
        async with self._deploy_lock:
            if self._closing:
                return 503, {"error": "the supervisor is shutting down"}
            current = self.shadow.backend
            if current is not None and current.name == spec.name and current.alive():
                return 200, {"action": "unchanged", "shadow": spec.name, "previous": None}
            if self.active is not None and self.active.name == spec.name:
                return self._fail(spec, 409, f"{spec.name} is the active backend; a shadow must be another version", started)
            backend, ready_s = await self._start(spec, started)
            if backend is None:
                return ready_s
            self.shadow.backend = backend
            if current is not None:
                await self._stop_backend(current)
            previous = current.name if current else None
            self._record("shadowing", spec.name, previous, pid=backend.pid, port=backend.port, ready_s=ready_s)
            log.info("shadowing traffic to %s", spec.name)
            return 200, {"action": "shadowing", "shadow": spec.name, "previous": previous, "ready_s": ready_s,
                         "pid": backend.pid, "port": backend.port}

    async def stop_shadow(self) -> tuple[int, dict]:
        async with self._deploy_lock:
            backend, self.shadow.backend = self.shadow.backend, None
            if backend is None:
                return 200, {"action": "unchanged", "shadow": None}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(backend.idle.wait(), 30)
            await self._stop_backend(backend)
            self._record("shadow_stopped", backend.name, None, mirrored=self.shadow.sent, dropped=self.shadow.dropped,
                         failed=self.shadow.failed)
            return 200, {"action": "shadow_stopped", "shadow": None, "previous": backend.name}

    # ---- HTTP handlers ---------------------------------------------------------------

    async def _handle_shadow(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            spec = DeploySpec.parse(await request.json())
        except ValueError as exc:
            return web.json_response({"error": str(exc) if isinstance(exc, _BadRequest) else f"invalid JSON: {exc}"}, status=400)
        status, body = await asyncio.shield(self.set_shadow(spec))
        return web.json_response(body, status=status)

    async def _handle_shadow_stop(self, request: web.Request) -> web.Response:
        from aiohttp import web

        status, body = await asyncio.shield(self.stop_shadow())
        return web.json_response(body, status=status)

    async def _handle_deploy(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            spec = DeploySpec.parse(await request.json())
        except ValueError as exc:
            return web.json_response({"error": str(exc) if isinstance(exc, _BadRequest) else f"invalid JSON: {exc}"}, status=400)
        task = asyncio.create_task(self.deploy(spec))
        self._deploy_tasks.add(task)
        task.add_done_callback(self._deploy_tasks.discard)
        try:
            # Shielded: a control client that disconnects must not abort a switch half-way.
            status, body = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            status, body = 503, {"error": f"{spec.name} was not deployed: the supervisor is shutting down"}
        return web.json_response(body, status=status)

    async def _handle_status(self, request: web.Request) -> web.Response:
        from aiohttp import web

        backends = [b for b in [self.active, *self.draining] if b is not None]
        return web.json_response({
            "active": self.active.describe() if self.active else None,
            "shadow": self.shadow.describe(),
            "in_flight": sum(b.in_flight for b in backends),
            "draining": [{"name": b.name, "pid": b.pid, "in_flight": b.in_flight} for b in self.draining],
            "history": list(self.history),
            "supervisor": {
                "pid": os.getpid(), "started_at": self.started_at, "host": self.host, "port": self.port,
                "control_port": self.control_port, "state_dir": str(self.state_dir),
            },
        })

    async def _handle_shutdown(self, request: web.Request) -> web.Response:
        from aiohttp import web

        self._stop_requested.set()
        await self._backends_stopped.wait()
        return web.json_response({"action": "shutdown", "stopped": self._stopped_names})

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if self._closing:
            return web.json_response({"error": "the supervisor is shutting down"}, status=503)
        body = await request.read()
        # Picking the backend and counting the request happen in one step of the event loop,
        # so a deploy can never stop a backend between the two.
        backend = self.active
        if backend is None:
            return web.json_response({"error": "no model is deployed"}, status=503)
        headers = _upstream_headers(request)
        if self.shadow.wants(request.method, request.path):
            # One id for both answers, so the request log pairs them.
            if request_id_from(headers) is None:
                headers[REQUEST_ID_HEADER] = new_request_id()
            self.shadow.submit(self._session, request.raw_path, headers.copy(), body)
        backend.acquire()
        try:
            return await self._forward(request, backend, body, headers)
        finally:
            backend.release()

    async def _forward(self, request: web.Request, backend: Backend, body: bytes, headers: Any) -> web.StreamResponse:
        import aiohttp
        from aiohttp import web
        from yarl import URL

        target = URL(f"http://127.0.0.1:{backend.port}{request.raw_path}", encoded=True)
        try:
            upstream = await self._session.request(
                request.method, target, headers=headers, data=body or None, allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            log.warning("backend %s (127.0.0.1:%d) unreachable: %s", backend.name, backend.port, detail)
            error = f"backend {backend.name} at 127.0.0.1:{backend.port} cannot be reached: {detail}"
            return web.json_response({"error": error, "backend": backend.name}, status=502)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        named_by_connection = {
            token.strip().lower() for value in upstream.headers.getall("Connection", ()) for token in value.split(",")
        }
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() not in named_by_connection:
                response.headers.add(key, value)
        downstream_failed = False
        try:
            await response.prepare(request)
            # iter_any hands over whatever has arrived, so server-sent events are relayed as
            # they are produced instead of in fixed-size blocks.
            async for chunk in upstream.content.iter_any():
                try:
                    await response.write(chunk)
                except (ConnectionError, aiohttp.ClientError):
                    downstream_failed = True
                    raise
            await response.write_eof()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if downstream_failed:
                # A client that stops reading (a closed chat window) is routine, not a fault.
                log.debug("client left while %s was answering %s", backend.name, request.path)
            else:
                log.warning("relay from %s aborted mid-body: %s", backend.name, str(exc) or type(exc).__name__)
            # Closing the backend connection tells it to stop generating for nobody; closing the
            # client's tells it the body is incomplete (a clean end would pass it off as whole).
            upstream.close()
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.serving.supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the stable port clients call")
    parser.add_argument("--control-port", type=int, required=True, help="the control API port (always on 127.0.0.1)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address the stable port listens on (default 127.0.0.1)")
    parser.add_argument("--stop-grace-s", type=float, default=10.0, help="SIGTERM to SIGKILL grace for a stopping backend")
    args = parser.parse_args(argv)
    if args.port == args.control_port:
        parser.error("--port and --control-port must differ")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s")
    supervisor = Supervisor(host=args.host, port=args.port, control_port=args.control_port,
                            state_dir=args.state_dir, stop_grace_s=args.stop_grace_s)
    try:
        asyncio.run(supervisor.run())
    except _StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Client (standard library only)
# --------------------------------------------------------------------------------------


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

    def shadow(self, name: str, command: list[str], port: int, ready_path: str = "/readyz", env: dict[str, str] | None = None,
               cwd: str | os.PathLike | None = None, ready_timeout_s: float = 300) -> dict:
        """Start `command` as the shadow backend; it answers copies of live requests and serves none."""
        payload = {"name": name, "command": [os.fspath(arg) for arg in command], "port": port, "ready_path": ready_path,
                   "env": dict(env or {}), "cwd": str(cwd) if cwd is not None else None, "ready_timeout_s": ready_timeout_s}
        try:
            status, body = self._call("POST", "/shadow", payload, timeout=ready_timeout_s + 120)
        except (OSError, http.client.HTTPException) as exc:
            raise DeployError(f"lost the supervisor at {self.control_url} while starting shadow {name}: {exc}") from exc
        if status != 200:
            raise DeployError(body.get("error") or f"shadow {name} answered HTTP {status}: {body}")
        return body

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
                               f"{_read_tail(log_path, start=offset)}")
        if time.monotonic() >= deadline:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            raise RuntimeError(f"the supervisor did not answer on port {control_port} within {timeout_s:g} s:\n"
                               f"{_read_tail(log_path, start=offset)}")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
