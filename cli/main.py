"""`driftloop` command line: dataset versions recorded by Dagster and restored by DVC;
the champion adapter, its promotion history, and rollback (`driftloop rollback` moves the
champion back and redeploys it in one step); backfills through the running daemon."""

import argparse
import sys
from datetime import UTC, datetime

import dagster as dg

from driftloop.registry import PromotionError
from resources.dvc import DvcStore
from resources.registry import ModelRegistry

DATASETS = ("source_documents", "qa_pairs", "instruction_dataset")


def _versions(name: str, limit: int) -> int:
    instance = dg.DagsterInstance.get()
    records = instance.fetch_materializations(dg.AssetKey(["data", name]), limit=limit).records
    if not records:
        print(f"no materializations of data/{name} in {instance.root_directory}")
        return 1
    print(f"{'materialized at (UTC)':<22} {'dvc md5':<34} {'rows':>7}  run")
    for record in records:
        meta = record.asset_materialization.metadata
        md5 = meta["dvc_md5"].value if "dvc_md5" in meta else "-"
        rows = meta["dagster/row_count"].value if "dagster/row_count" in meta else "-"
        when = datetime.fromtimestamp(record.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when:<22} {md5:<34} {rows:>7}  {record.run_id}")
    return 0


def _restore(name: str, md5: str) -> int:
    path = DvcStore().restore(name, md5)
    print(f"restored data/{name} at DVC md5 {md5} to {path}")
    return 0


def _model(action: str, to: str | None, reason: str) -> int:
    registry = ModelRegistry().registry()
    if action == "champion":
        champion = registry.champion()
        print(champion.version if champion else "no champion yet")
        return 0 if champion else 1
    if action == "history":
        events = registry.history()
        for e in events:
            print(f"{e['at']}  {e['action']:<8} {e['version']:<22} previous={e.get('previous')}  by={e.get('by')}  run={e.get('run_id')}")
        return 0 if events else 1
    try:
        event = registry.rollback(to, reason=reason)
    except PromotionError as error:
        print(f"rollback refused: {error}", file=sys.stderr)
        return 2
    print(f"champion is now {event['version']} (was {event['previous']})")
    _record_in_dagster(event)
    return 0


def _record_in_dagster(event: dict) -> None:
    """The rollback as a materialization of evaluation/champion, so the asset, its data
    version and its history in the UI name the champion that serves, not the last one the
    gate promoted. Nothing downstream is automated on it: the deploy is the caller's."""
    from dagster._core.errors import DagsterHomeNotSetError

    from assets.common import champion_moved
    from assets.keys import CHAMPION

    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        print("rollback: DAGSTER_HOME is not set, so evaluation/champion in Dagster still shows "
              f"{event['previous']}; the registry's history has the rollback", file=sys.stderr)
        return
    instance.report_runless_asset_event(champion_moved(event, CHAMPION))


def rollback(to: str | None, reason: str, port: int, deploy=None) -> int:
    """The champion alias back to `to` (default: the one before), then that champion built and
    deployed with a zero-downtime switch. A failed deploy leaves the current version serving;
    the alias stays rolled back, so the next deploy serves the restored champion."""
    from cli.serve import deploy_champion

    code = _model("rollback", to, reason or "driftloop rollback")
    if code != 0:
        return code
    code = (deploy or deploy_champion)(port)
    if code != 0:
        print(f"rollback: the champion alias moved, but the deploy failed (exit {code}); the version that was serving still serves. "
              "Retry with `make serve` or `driftloop rollback --to <version>`.", file=sys.stderr)
        return code
    print(f"rollback: {ModelRegistry().registry().champion().version} serves on http://127.0.0.1:{port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="dataset versions").add_subparsers(dest="action", required=True)
    versions = data.add_parser("versions", help="list recorded versions of a dataset")
    versions.add_argument("name", choices=DATASETS)
    versions.add_argument("--limit", type=int, default=20)
    restore = data.add_parser("restore", help="bring a dataset file back to a recorded DVC version")
    restore.add_argument("name", choices=DATASETS)
    restore.add_argument("md5")
    model = sub.add_parser("model", help="the champion adapter").add_subparsers(dest="action", required=True)
    model.add_parser("champion", help="print the champion version")
    model.add_parser("history", help="every promotion and rollback: who, when, which version")
    alias_back = model.add_parser("rollback", help="make an earlier champion the champion again")
    alias_back.add_argument("--to", default=None, help="version to restore; default: the champion before the current one")
    alias_back.add_argument("--reason", default="")
    undo = sub.add_parser("rollback", help="make an earlier champion the champion again and deploy it (one step)")
    undo.add_argument("--to", default=None, help="version to restore; default: the champion before the current one")
    undo.add_argument("--reason", default="")
    undo.add_argument("--port", type=int, default=None, help="the stable serving port (default: DRIFTLOOP_SERVE_PORT or 3001)")
    backfill = sub.add_parser("backfill", help="a range of an asset's partitions, run by the daemon and listed on the UI's backfills page")
    backfill.add_argument("asset", help="asset key, e.g. monitoring/inference_log")
    backfill.add_argument("--from", dest="start", required=True, help="first partition key, e.g. 2026-03-01")
    backfill.add_argument("--to", dest="end", required=True, help="last partition key (included)")
    backfill.add_argument("--url", default=None, help="the Dagster webserver (default: http://127.0.0.1:DRIFTLOOP_UI_PORT)")
    backfill.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for the backfill to finish; exit 1 if it failed")
    args = parser.parse_args(argv)
    if args.command == "backfill":
        from cli.backfill import run
        from driftloop.settings import Settings

        return run(args.url or f"http://127.0.0.1:{Settings.from_env().ui_port}", args.asset, args.start, args.end, args.wait)
    if args.command == "rollback":
        from cli.serve import default_port

        return rollback(args.to, args.reason, args.port or default_port())
    if args.command == "model":
        return _model(args.action, getattr(args, "to", None), getattr(args, "reason", ""))
    if args.action == "versions":
        return _versions(args.name, args.limit)
    return _restore(args.name, args.md5)


if __name__ == "__main__":
    sys.exit(main())
