"""`make serve`: build the current champion into a bento (a no-op when that bento
exists), deploy it on the stable port through the supervisor, and stay in the
foreground until Ctrl-C, which stops the service."""

import argparse
import subprocess
import sys
import time

from cli import commands
from driftloop.serving.supervisor.client import SupervisorClient


def default_port() -> int:
    from driftloop.settings import Settings

    return Settings.from_env().serve_port


def deploy_champion(port: int) -> int:
    """Build the registry's champion into a bento (a no-op when it exists) and deploy it on
    `port`, through Dagster, so both are recorded in the lineage like any other run."""
    config = {"resources": {"deployer": {"config": {"port": port}}}}
    return subprocess.run(commands.launch(assets="serving/bento,serving/deployment", config_json=config)).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="the stable serving port (default: DRIFTLOOP_SERVE_PORT or 3001)")
    args = parser.parse_args()
    args.port = args.port or default_port()
    code = deploy_champion(args.port)
    if code != 0:
        print("serving failed; is there a champion? (make pipeline first)", file=sys.stderr)
        return code
    client = SupervisorClient(f"http://127.0.0.1:{args.port + 1}")
    active = client.status().get("active") or {}
    print(f"serving {active.get('name')} on http://127.0.0.1:{args.port} (OpenAI API at /v1). Ctrl-C stops it.", flush=True)
    try:
        while client.alive():
            time.sleep(2)
        return 1
    except KeyboardInterrupt:
        client.shutdown()
        print("service stopped", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
