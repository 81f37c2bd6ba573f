#!/usr/bin/env bash
# Bring up the Dagster UI (webserver + daemon), materialize the lineage, keep the UI up.
# Ctrl-C stops everything this script started.
set -euo pipefail
port=${DRIFTLOOP_UI_PORT:-3000}
dagster dev -w workspace.yaml -h 127.0.0.1 -p "$port" > "$DAGSTER_HOME/dagster-dev.log" 2>&1 &
ui_pid=$!
stop() { kill -INT "$ui_pid" 2>/dev/null || true; wait "$ui_pid" 2>/dev/null || true; }
trap stop EXIT INT TERM

for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/server_info" > /dev/null 2>&1 && break
  kill -0 "$ui_pid" 2>/dev/null || { echo "dagster dev exited; see $DAGSTER_HOME/dagster-dev.log"; exit 1; }
  sleep 1
done
echo "Dagster UI: http://127.0.0.1:$port  (log: $DAGSTER_HOME/dagster-dev.log)"

if dagster job execute -f orchestration/definitions.py -j driftloop_pipeline; then
  echo "Pipeline materialized. Lineage: http://127.0.0.1:$port/asset-groups  Ctrl-C to stop."
else
  echo "Pipeline run failed; the UI shows why: http://127.0.0.1:$port/runs  Ctrl-C to stop."
fi
wait "$ui_pid"
