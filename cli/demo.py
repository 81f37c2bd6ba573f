"""`make demo`: bring up the Dagster UI (webserver + daemon), materialize the main job,
and keep everything up until Ctrl-C, which stops every process this started.

On a fresh home the first run has no champion to compare against, so the demo retrains
once more (another seed) as the weekly schedule would: that report shows base, champion
and challenger side by side."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cli import commands



def project_root() -> Path:
    """The checkout a demo runs in: its children start Dagster on this folder's
    workspace.yaml and read its demo data, so it is the working directory they inherit."""
    root = Path.cwd()
    if not (root / "workspace.yaml").is_file():
        raise SystemExit(f"{root} has no workspace.yaml: run the demo from the project root (`make demo`)")
    return root


class Group:
    """A child in its own process group, so stopping it stops its code servers too."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            # A shell that started us in the background may have left SIGINT ignored; the
            # child must take it, or Ctrl-C could only end it by SIGKILL.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_http(url: str, group: Group, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group.alive():
            raise SystemExit(f"{url} never answered: the process exited; see {group.log}")
        try:
            urllib.request.urlopen(url, timeout=3)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s; see {group.log}")


def stop_all(serve_port: int, ui: Group) -> None:
    """Stop the model service on `serve_port` (its supervisor and backends), then the UI and daemon."""
    from driftloop.serving.supervisor.client import SupervisorClient

    service = SupervisorClient(f"http://127.0.0.1:{serve_port + 1}")
    if service.alive():
        service.shutdown()
        print("stopped the model service", flush=True)
    ui.stop()
    print("stopped the Dagster UI and daemon", flush=True)


RETRAIN = json.dumps({"ops": {"training__lora_adapter": {"config": {"seed": 1}}}})


def _latest_report_has_champion() -> bool:
    from resources.registry import ModelRegistry

    reports = sorted((ModelRegistry().registry().root / "reports").glob("*/result.json"))
    return bool(reports) and "champion" in json.loads(reports[-1].read_text())["result"]["models"]


def main() -> int:
    from driftloop.settings import Settings

    project_root()
    settings = Settings.from_env()
    serve_port = settings.serve_port
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=settings.ui_port)
    parser.add_argument("--job", default="driftloop_pipeline")
    args = parser.parse_args()
    home = Path(os.environ["DAGSTER_HOME"])
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    ui = Group(commands.ui(args.port), home / "dagster-dev.log")
    try:
        # The UI starts first: it creates the instance's SQLite schema before the job writes to it.
        wait_http(f"http://127.0.0.1:{args.port}/server_info", ui, timeout=180)
        print(f"Dagster UI: http://127.0.0.1:{args.port}  (log: {ui.log})", flush=True)
        run = subprocess.run(commands.launch(job=args.job))
        if run.returncode == 0 and args.job == "driftloop_pipeline" and not _latest_report_has_champion():
            print("First champion promoted; retraining once more so the report compares base, champion and challenger.", flush=True)
            # The retrain job (data refresh, training, evaluation, gate, redeploy), as the drift
            # sensor starts it; "everything downstream of the adapter" would also start a shadow
            # of the version that now serves and the monitoring checks.
            retrain_config = home / "demo-retrain.yaml"
            retrain_config.write_text(RETRAIN, encoding="utf-8")
            run = subprocess.run(commands.launch(job="retrain_and_redeploy", config=retrain_config))
        if run.returncode == 0:
            print(f"Champion served: http://127.0.0.1:{serve_port}/answer and the OpenAI API at http://127.0.0.1:{serve_port}/v1", flush=True)
            print(f"Lineage materialized: http://127.0.0.1:{args.port}/asset-groups   Ctrl-C stops everything.", flush=True)
        else:
            print(f"The run failed; the UI shows why: http://127.0.0.1:{args.port}/runs   Ctrl-C stops everything.", flush=True)
        while ui.alive():
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(serve_port, ui)


if __name__ == "__main__":
    sys.exit(main())
