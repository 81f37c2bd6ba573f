"""The supervisor process: it owns the stable port and the state dir, adopts the backend a
previous supervisor left running, and deploys, switches, drains and stops backends.

Its state dir holds state.json (the active backend, rewritten atomically so a crash never
leaves half a file that would stop the next supervisor from adopting it), events.jsonl
(one line per process event: deployed, unchanged, failed, adopted, exited, stopped,
shadowing, shadow_stopped, canary, canary_promoted, canary_rolled_back, canary_ended; the
last HISTORY_LIMIT are reloaded on start and shown by /status), logs/<name>.log and
supervisor.lock. state.json also holds the running canary, its share and its counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.atomic import write_json
from driftloop.serving.canary import CanaryRoute
from driftloop.serving.shadow import ShadowMirror
from driftloop.serving.supervisor.backend import Backend, now
from driftloop.serving.supervisor.control import control_app
from driftloop.serving.supervisor.processes import port_in_use, process_start_ticks, read_tail
from driftloop.serving.supervisor.proxy import proxy_app, upstream_session
from driftloop.serving.supervisor.spec import DeploySpec

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

log = logging.getLogger(__name__)

HISTORY_LIMIT = 200
# How long a restarted supervisor keeps probing a recorded backend before giving up on it: a
# busy model server can miss one probe, and requests queue in the listen backlog meanwhile.
ADOPT_PROBE_S = 5.0
EXIT_DRAIN_S = 10.0


class StartupError(RuntimeError):
    pass


def listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


class Supervisor:
    def __init__(self, *, host: str, port: int, control_port: int, state_dir: Path, stop_grace_s: float = 10.0) -> None:
        self.host, self.port, self.control_port = host, port, control_port
        self.state_dir = Path(state_dir).resolve()
        self.logs_dir = self.state_dir / "logs"
        self.state_path = self.state_dir / "state.json"
        self.events_path = self.state_dir / "events.jsonl"
        self.stop_grace_s = stop_grace_s
        self.started_at = now()
        self.active: Backend | None = None
        self.shadow = ShadowMirror()
        self.canary: CanaryRoute | None = None
        self.draining: list[Backend] = []
        self.history: deque[dict] = deque(maxlen=HISTORY_LIMIT)
        self.closing = False
        # The proxy's connections to the backends, shared with the shadow mirror.
        self.session: aiohttp.ClientSession | None = None
        self._deploy_lock = asyncio.Lock()
        self._deploy_tasks: set[asyncio.Task] = set()
        self._stop_requested = asyncio.Event()
        self._backends_stopped = asyncio.Event()
        self._stopped_names: list[str] = []
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
        proxy_sock = listen(self.host, self.port)
        control_sock = listen("127.0.0.1", self.control_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested.set)
        self._load_history()

        self.session = upstream_session()
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), cookie_jar=aiohttp.DummyCookieJar(),
        )
        runners: list[web.AppRunner] = []
        monitor: asyncio.Task | None = None
        try:
            await self._adopt()
            # No access logs: the proxy would log every inference call and the control API every
            # status poll; deploys and failures are logged where they happen.
            for app, sock in ((proxy_app(self), proxy_sock), (control_app(self), control_sock)):
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
            await self.session.close()
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
            raise StartupError(f"another supervisor is already using {self.state_dir}") from exc

    async def shutdown(self) -> list[str]:
        """Stop every backend and then the supervisor; the names of the backends stopped."""
        self._stop_requested.set()
        await self._backends_stopped.wait()
        return self._stopped_names

    async def _stop_everything(self) -> None:
        self.closing = True
        for task in list(self._deploy_tasks):
            task.cancel()
        await asyncio.gather(*self._deploy_tasks, return_exceptions=True)
        backends = [b for b in [self.active, self.shadow.backend, self.canary and self.canary.backend, *self.draining] if b]
        self.shadow.backend = None
        self.canary = None
        # Requests already proxied get a short chance to finish before their backend goes away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(b.idle.wait() for b in backends)), EXIT_DRAIN_S)
        await asyncio.gather(*(b.stop(self.stop_grace_s) for b in backends))
        stopped = self.active
        self.active = None
        self.draining.clear()
        self._write_state()
        if stopped is not None:
            self._record("stopped", stopped.name, None)
        self._stopped_names = [b.name for b in backends]
        self._backends_stopped.set()

    # ---- state -----------------------------------------------------------------------

    def status(self) -> dict:
        backends = [b for b in [self.active, self.canary and self.canary.backend, *self.draining] if b]
        return {
            "active": self.active.describe() if self.active else None,
            "shadow": self.shadow.describe(),
            "canary": self.canary.describe() if self.canary else None,
            "in_flight": sum(b.in_flight for b in backends),
            "draining": [{"name": b.name, "pid": b.pid, "in_flight": b.in_flight} for b in self.draining],
            "history": list(self.history),
            "supervisor": {
                "pid": os.getpid(), "started_at": self.started_at, "host": self.host, "port": self.port,
                "control_port": self.control_port, "state_dir": str(self.state_dir),
            },
        }

    def _write_state(self) -> None:
        write_json(self.state_path, {
            "active": self.active.record() if self.active else None,
            "canary": self.canary.record() if self.canary else None,
            "updated_at": now(),
            "supervisor_pid": os.getpid(),
        }, indent=2)

    def _record(self, action: str, name: str, previous: str | None, **extra: Any) -> dict:
        entry = {"at": now(), "action": action, "name": name, "previous": previous, **extra}
        self.history.append(entry)
        with open(self.events_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def _load_history(self) -> None:
        for line in read_tail(self.events_path, limit=256 * 1024).splitlines()[-HISTORY_LIMIT:]:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    self.history.append(entry)

    async def _adopt(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return
        if not isinstance(state, dict):
            log.warning("ignoring %s: not a JSON object", self.state_path)
            return
        self.active = await self._adopt_backend(state.get("active"), "active")
        recorded = state.get("canary")
        canary = await self._adopt_backend(recorded, "canary") if self.active is not None else None
        if canary is not None:
            try:
                self.canary = CanaryRoute.restore(canary, recorded)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("stopping canary %s: its routing in %s is malformed: %s", canary.name, self.state_path, exc)
                await canary.stop(self.stop_grace_s)
        elif recorded and self.active is None:
            log.warning("recorded canary %s is not adopted: nothing serves beside it", recorded.get("name"))
        self._write_state()
        for role, backend in (("active", self.active), ("canary", self.canary and self.canary.backend)):
            if backend is not None:
                self._record("adopted", backend.name, None, pid=backend.pid, port=backend.port, role=role)
                log.info("adopted running %s backend %s (pid %d, port %d)", role, backend.name, backend.pid, backend.port)

    async def _adopt_backend(self, recorded: Any, role: str) -> Backend | None:
        """The backend a previous supervisor recorded, if it still runs and answers ready."""
        if not recorded:
            return None
        try:
            backend = Backend(
                name=recorded["name"], port=int(recorded["port"]), pid=int(recorded["pid"]),
                command=list(recorded.get("command") or []), started_at=recorded.get("started_at") or "",
                ready_path=recorded.get("ready_path") or "/readyz", start_ticks=recorded.get("start_ticks"),
                log_path=recorded.get("log"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring malformed %s backend in %s: %s", role, self.state_path, exc)
            return None
        verified = backend.start_ticks is not None and process_start_ticks(backend.pid) == backend.start_ticks
        if not backend.alive():
            log.info("recorded %s backend %s (pid %d) is gone", role, backend.name, backend.pid)
            return None
        deadline = time.monotonic() + ADOPT_PROBE_S
        while not await backend.ready(self._probe_session):
            if time.monotonic() >= deadline or not backend.alive():
                if verified and backend.alive():
                    # Our own orphan (same pid and start time) that no longer serves: left
                    # running it would hold its port forever with nobody to stop it.
                    log.warning("recorded %s backend %s (pid %d) is not ready; stopping it", role, backend.name, backend.pid)
                    await backend.stop(self.stop_grace_s)
                else:
                    log.warning("recorded %s backend %s (pid %d) is not ready and cannot be proven ours; leaving it alone",
                                role, backend.name, backend.pid)
                return None
            await asyncio.sleep(0.25)
        return backend

    async def _monitor(self) -> None:
        counted = None
        while True:
            await asyncio.sleep(1.0)
            sides = self.canary.record()["sides"] if self.canary is not None else None
            if sides is not None and sides != counted:
                # The canary's counts survive a supervisor crash, less the last second's.
                counted = sides
                self._write_state()
            for role, backend in (("active", self.active), ("canary", self.canary and self.canary.backend)):
                if backend is not None and not backend.exit_reported and not backend.alive():
                    backend.exit_reported = True
                    reason = backend.exit_description()
                    log.error("%s backend %s (pid %d) %s; %s", role, backend.name, backend.pid, reason,
                              "requests get 502 until the next deploy" if role == "active" else "the serving version answers its share")
                    self._record("exited", backend.name, None, reason=reason, role=role)

    # ---- deploy ----------------------------------------------------------------------

    def _fail(self, spec: DeploySpec, status: int, error: str, started: float) -> tuple[int, dict]:
        previous = self.active.name if self.active else None
        self._record("failed", spec.name, previous, error=error, port=spec.port, seconds=round(time.monotonic() - started, 3))
        log.error("deploy of %s failed: %s", spec.name, error)
        return status, {"error": error, "active": previous}

    async def _start(self, spec: DeploySpec, started: float) -> tuple[Backend | None, float | tuple[int, dict]]:
        """Spawn `spec` and wait until it is ready: (backend, seconds to ready), or (None, the failure answer)."""
        if port_in_use(spec.port):
            # Readiness would be judged on whatever already listens there.
            return None, self._fail(spec, 409, f"{spec.name} cannot use port {spec.port}: another process is listening on it",
                                    started)
        try:
            backend, log_offset = Backend.spawn(spec, self.logs_dir)
        except OSError as exc:
            return None, self._fail(spec, 502, f"{spec.name} did not become ready: it could not be started: {exc}", started)
        spawned = time.monotonic()
        log.info("started %s (pid %d) on port %d; waiting for %s", spec.name, backend.pid, spec.port, spec.ready_path)
        try:
            reason = await backend.wait_ready(self._probe_session, spec.ready_timeout_s)
            if reason is not None:
                await backend.stop(self.stop_grace_s)
        except BaseException as exc:
            backend.kill_now()
            if isinstance(exc, asyncio.CancelledError):
                self._fail(spec, 503, f"{spec.name} was not deployed: the supervisor is shutting down", started)
            raise
        if reason is not None:
            tail = read_tail(Path(backend.log_path), start=log_offset)
            error = f"{spec.name} did not become ready: {reason}"
            if tail:
                error += f"\n--- end of {backend.log_path} ---\n{tail}"
            return None, self._fail(spec, 502, error, started)
        return backend, round(time.monotonic() - spawned, 3)

    def start_deploy(self, spec: DeploySpec) -> asyncio.Task:
        """`deploy(spec)` as a task of its own: a control client that goes away does not cancel it, shutdown does."""
        task = asyncio.create_task(self.deploy(spec))
        self._deploy_tasks.add(task)
        task.add_done_callback(self._deploy_tasks.discard)
        return task

    async def deploy(self, spec: DeploySpec) -> tuple[int, dict]:
        started = time.monotonic()
        async with self._deploy_lock:
            if self.closing:
                return 503, {"error": "the supervisor is shutting down"}
            current = self.active
            if current is not None and current.name == spec.name and current.alive():
                self._record("unchanged", spec.name, None, pid=current.pid, port=current.port)
                return 200, {"action": "unchanged", "active": spec.name, "previous": None,
                             "seconds": round(time.monotonic() - started, 3), "pid": current.pid, "port": current.port}
            if current is not None and current.port == spec.port and current.alive():
                return self._fail(spec, 409, f"{spec.name} cannot use port {spec.port}: the active backend {current.name} "
                                  "serves there, and a zero-downtime switch needs both running at once", started)
            canary = self.canary
            if canary is not None and canary.backend.name == spec.name and canary.backend.alive():
                backend, ready_s = canary.backend, 0.0
            else:
                backend, ready_s = await self._start(spec, started)
                if backend is None:
                    return ready_s
            if canary is not None:
                # A deploy ends any canary: its version is now everything, or nothing.
                self.canary = None
                if canary.backend is not backend:
                    await self._stop_quietly(canary.backend)
                self._record("canary_ended", canary.backend.name, canary.baseline, outcome="promoted" if canary.backend is backend
                             else f"replaced by {spec.name}", sides={k: v.to_dict() for k, v in canary.sides.items()})

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
                await previous.stop(self.stop_grace_s)
                self.draining.remove(previous)
            shadow = self.shadow.backend
            if shadow is not None and shadow.name == spec.name:
                # The shadowed challenger now serves; mirroring it to itself would only double its load.
                self.shadow.backend = None
                await shadow.stop(self.stop_grace_s)
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
            if self.closing:
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
                await current.stop(self.stop_grace_s)
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
            await backend.stop(self.stop_grace_s)
            self._record("shadow_stopped", backend.name, None, mirrored=self.shadow.sent, dropped=self.shadow.dropped,
                         failed=self.shadow.failed)
            return 200, {"action": "shadow_stopped", "shadow": None, "previous": backend.name}

    async def _stop_quietly(self, backend: Backend, drain_s: float = 30.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.idle.wait(), drain_s)
        await backend.stop(self.stop_grace_s)

    async def set_canary(self, spec: DeploySpec, route: dict) -> tuple[int, dict]:
        """Start `spec` beside the active backend and send it `route["share"]` of inference traffic."""
        started = time.monotonic()
        async with self._deploy_lock:
            if self.closing:
                return 503, {"error": "the supervisor is shutting down"}
            current = self.canary
            if current is not None and current.backend.name == spec.name and current.backend.alive():
                return 200, {"action": "unchanged", "canary": spec.name, "share": current.share}
            if self.active is None or not self.active.alive():
                return self._fail(spec, 409, f"{spec.name} cannot be a canary: nothing serves beside it; deploy it instead", started)
            if self.active.name == spec.name:
                return self._fail(spec, 409, f"{spec.name} is the active backend; a canary must be another version", started)
            backend, ready_s = await self._start(spec, started)
            if backend is None:
                return ready_s
            self.canary = CanaryRoute(backend=backend, started_at=now(), baseline=self.active.name, **route)
            self._write_state()
            if current is not None:
                await self._stop_quietly(current.backend)
                self._record("canary_ended", current.backend.name, current.baseline, outcome=f"replaced by {spec.name}")
            self._record("canary", spec.name, self.active.name, pid=backend.pid, port=backend.port, ready_s=ready_s, share=route["share"])
            log.info("canary %s takes %.0f%% of inference traffic beside %s", spec.name, 100 * route["share"], self.active.name)
            return 200, {"action": "canary", "canary": spec.name, "baseline": self.active.name, "share": route["share"],
                         "ready_s": ready_s, "pid": backend.pid, "port": backend.port, "started_at": self.canary.started_at}

    async def end_canary(self, promote: bool, name: str | None = None) -> tuple[int, dict]:
        """Promote the canary to all traffic (the old active drains and stops), or roll it back
        (the canary drains and stops). `name`, when given, must be the running canary's."""
        async with self._deploy_lock:
            canary = self.canary
            if canary is None or (name and canary.backend.name != name):
                return 409, {"error": f"no canary {name or ''} is running".replace("  ", " "),
                             "canary": canary.backend.name if canary else None, "active": self.active.name if self.active else None}
            sides = {k: v.to_dict() for k, v in canary.sides.items()}
            self.canary = None
            if not promote:
                self._write_state()
                await self._stop_quietly(canary.backend)
                self._record("canary_rolled_back", canary.backend.name, canary.baseline, sides=sides)
                log.info("canary %s rolled back; %s serves everything", canary.backend.name, canary.baseline)
                return 200, {"action": "rolled_back", "canary": canary.backend.name, "active": canary.baseline, "sides": sides}
            if not canary.backend.alive():
                self._write_state()
                self._record("canary_rolled_back", canary.backend.name, canary.baseline, sides=sides, reason="exited before promotion")
                return 409, {"error": f"canary {canary.backend.name} is not running; it cannot be promoted", "active": canary.baseline}
            previous, self.active = self.active, canary.backend
            self._write_state()
            if previous is not None:
                self.draining.append(previous)
                await self._stop_quietly(previous)
                self.draining.remove(previous)
            self._record("canary_promoted", canary.backend.name, canary.baseline, sides=sides)
            log.info("canary %s promoted to all traffic (was %s)", canary.backend.name, canary.baseline)
            return 200, {"action": "promoted", "active": canary.backend.name, "previous": canary.baseline, "sides": sides}
