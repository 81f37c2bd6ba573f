"""Local zero-downtime deployment supervisor.

The command line that ensure_supervisor starts: python -m driftloop.serving.supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from driftloop.serving.supervisor.daemon import StartupError, Supervisor

log = logging.getLogger("driftloop.serving.supervisor")


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
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
