"""`driftloop backfill`: a backfill submitted to the running Dagster (`make ui` / `dg dev`)
the way the UI's "Materialize partitions" dialog submits one, so the daemon runs it under
the assets' backfill policies, run retries and run monitoring apply, and it is listed on
the UI's backfills page. `dg launch --partition-range` runs the same range in the calling
process instead, with no daemon and no backfill record."""

import json
import time
import urllib.error
import urllib.request

LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on UnauthorizedError { message } ... on InvalidStepError { invalidStepKey } ... on InvalidOutputError { stepKey invalidOutputName }
  ... on PartitionSetNotFoundError { message } ... on PartitionKeysNotFoundError { message } ... on RunConflict { message }
  ... on InvalidSubsetError { message } ... on ConflictingExecutionParamsError { message } ... on NoModeProvidedError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status numPartitions runs(limit: 100) { runId status } } ... on PythonError { message } } }"""
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class BackfillError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"{url.rstrip('/')}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        # GraphQL reports a refused request (a partition key the asset does not have) as a 500 with errors.
        try:
            body = json.loads(error.read())
        except ValueError:
            raise BackfillError(f"{url} answered {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise BackfillError(f"no Dagster webserver at {url} ({error.reason}); start it with `make ui` or `dg dev`") from error
    if body.get("errors"):
        raise BackfillError("; ".join(e.get("message", str(e)) for e in body["errors"]))
    return body["data"]


def launch(url: str, asset: str, start: str, end: str, title: str | None = None) -> str:
    params = {"partitionsByAssets": [{"assetKey": {"path": asset.split("/")}, "partitions": {"range": {"start": start, "end": end}}}],
              "title": title or f"{asset} {start}...{end}"}
    result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        detail = {k: v for k, v in result.items() if k != "__typename"}
        raise BackfillError(f"the backfill of {asset} {start}...{end} was refused: {result['__typename']} {detail}")
    return result["backfillId"]


def wait(url: str, backfill_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if state["__typename"] != "PartitionBackfill":
            raise BackfillError(f"backfill {backfill_id}: {state.get('message', state['__typename'])}")
        if state["status"] in DONE:
            return state
        if time.monotonic() > deadline:
            raise BackfillError(f"backfill {backfill_id} still {state['status']} after {timeout_s:.0f}s; is the daemon running?")
        time.sleep(2)


def run(url: str, asset: str, start: str, end: str, wait_s: float | None) -> int:
    try:
        backfill_id = launch(url, asset, start, end)
        print(f"backfill {backfill_id}: {asset} {start}...{end}; {url.rstrip('/')}/runs/b/{backfill_id}", flush=True)
        if wait_s is None:
            return 0
        state = wait(url, backfill_id, wait_s)
    except BackfillError as error:
        print(f"backfill: {error}", flush=True)
        return 2
    runs = ", ".join(f"{r['runId'][:8]} {r['status']}" for r in state["runs"])
    print(f"backfill {backfill_id}: {state['status']}, {state['numPartitions']} partitions, runs: {runs}")
    return 0 if state["status"] in ("COMPLETED", "COMPLETED_SUCCESS") else 1
