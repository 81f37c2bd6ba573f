"""Local zero-downtime deployment supervisor.

A long-lived process owns a stable HTTP port and forwards every request to the active
backend (a BentoML model server, or any HTTP server). A deploy starts the new backend next
to the old one, waits until it is ready, switches traffic in one step, lets the old
backend finish the requests it already has, and only then stops it: clients of the
stable port never see a failed request.

    python -m driftloop.serving.supervisor --port 3001 --control-port 3002 --state-dir DIR

The control API listens on loopback only (POST /deploy, GET /status, POST /shutdown,
POST and DELETE /shadow: a backend that gets a copy of every inference request and
serves none, see driftloop.serving.shadow; POST /canary, POST /canary/promote and DELETE
/canary: a backend that serves a sticky share of inference requests, see
driftloop.serving.canary).
DIR holds state.json (the active backend, so a restarted supervisor adopts it instead
of taking the model down), events.jsonl (the supervisor's process events, see daemon;
the audit trail of deploys that monitoring reads is the serving asset's
artifacts/serving/deployments.jsonl), logs/<name>.log (each backend's output) and
supervisor.log (when started by ensure_supervisor).

The modules, by job:
- processes: /proc liveness of pids and process groups, signals, ports, log tails;
- spec: DeploySpec, a validated deploy request;
- backend: Backend, one running backend process (spawn, readiness, stop);
- proxy: the reverse proxy on the stable port;
- daemon: the Supervisor (state, adoption, deploy, switch, drain, shadow, canary);
- control: the control API's routes;
- client: SupervisorClient and ensure_supervisor, for callers;
- __main__: the command line that ensure_supervisor starts.

client and processes use only the standard library, so callers such as Dagster assets
import them cheaply; aiohttp is imported only by the supervisor process itself.
"""
