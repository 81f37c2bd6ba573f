"""The production instance (deploy/dagster.yaml) against a real PostgreSQL server on
loopback: runs, event log and schedule storage in Postgres, assets materialized by the
multiprocess executor (every step a separate process writing to the same database),
and the event log read back.

Without PostgreSQL binaries the test is skipped, unless DRIFTLOOP_REQUIRE_POSTGRES=1
(set by .ci/run), where a skip would hide a broken CI machine: then it fails."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from driftloop.serving.supervisor.processes import free_port

REPO = Path(__file__).resolve().parents[1]
PG_USER = "driftloop-pg"
PASSWORD = "driftloop-test-password"


def postgres_bin_dir() -> Path | None:
    candidates = [os.environ.get("DRIFTLOOP_PG_BIN", "")]
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).resolve().parent))
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), key=lambda p: int(Path(p).parent.name), reverse=True) \
        if Path("/usr/lib/postgresql").is_dir() else []
    for folder in filter(None, candidates):
        if (Path(folder) / "pg_ctl").is_file() and (Path(folder) / "initdb").is_file():
            return Path(folder)
    return None


def _as_server_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI containers often are root.
    if os.geteuid() != 0:
        return command
    if subprocess.run(["id", "-u", PG_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER], check=True)
    return ["runuser", "-u", PG_USER, "--", *command]


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        reason = "no PostgreSQL binaries (pg_ctl, initdb) on PATH, in $DRIFTLOOP_PG_BIN or /usr/lib/postgresql/*/bin"
        if os.environ.get("DRIFTLOOP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DRIFTLOOP_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    # Under /tmp itself: pytest's own tmp folders are private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
    data, pwfile, log = root / "data", root / "pw", root / "server.log"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        _as_server_user(["true"])
        shutil.chown(root, PG_USER)
        shutil.chown(pwfile, PG_USER)
    port = free_port()
    try:
        subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "dagster", "--pwfile", str(pwfile),
                                        "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        started = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
                                 capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, f"pg_ctl start failed: {started.stderr}\n{log.read_text() if log.exists() else ''}"
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USERNAME": "dagster",
               "DAGSTER_PG_PASSWORD": PASSWORD, "DAGSTER_PG_DB": "postgres"}
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@dg.asset(group_name="pg")
def numbers() -> list[int]:
    return list(range(10))


@dg.asset(group_name="pg", check_specs=[dg.AssetCheckSpec("positive", asset="total", blocking=True)])
def total(numbers: list[int]):
    value = sum(numbers)
    yield dg.MaterializeResult(metadata={"total": value})
    yield dg.AssetCheckResult(check_name="positive", passed=value > 0)


@dg.asset(group_name="pg")
def doubled(numbers: list[int]) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"doubled": sum(2 * n for n in numbers)})


def pg_job() -> dg.JobDefinition:
    defs = dg.Definitions(assets=[numbers, total, doubled], jobs=[dg.define_asset_job("pg_job")],
                          executor=dg.multiprocess_executor.configured({"max_concurrent": 2}))
    return defs.resolve_job_def("pg_job")


@pytest.fixture
def pg_instance(postgres, tmp_path, monkeypatch):
    for key, value in postgres.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_production_instance_stores_runs_and_events_in_postgres(pg_instance, postgres):
    import psycopg2

    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)

    # Child processes import this file by name from the tests folder.
    job = dg.build_reconstructable_job("test_postgres", "pg_job", reconstructor_working_directory=str(Path(__file__).parent))
    result = dg.execute_job(job, instance=pg_instance)
    assert result.success

    run = pg_instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    total_event = pg_instance.get_latest_materialization_event(dg.AssetKey("total"))
    assert total_event.run_id == result.run_id and total_event.asset_materialization.metadata["total"].value == 45
    assert pg_instance.get_latest_materialization_event(dg.AssetKey("doubled")).asset_materialization.metadata["doubled"].value == 90
    check = pg_instance.event_log_storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(dg.AssetKey("total"), "positive")])
    assert list(check.values())[0].status.value == "SUCCEEDED"

    # The steps ran in their own processes and wrote to the same database.
    records = pg_instance.get_records_for_run(result.run_id).records
    step_pids = {r.event_log_entry.dagster_event.pid for r in records
                 if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.event_type_value == "STEP_START"}
    assert len(step_pids) == 3 and os.getpid() not in step_pids

    # Straight from Postgres, not through Dagster: the rows are really there.
    with psycopg2.connect(host="127.0.0.1", port=int(postgres["DAGSTER_PG_PORT"]), user="dagster",
                          password=PASSWORD, dbname="postgres") as conn, conn.cursor() as cursor:
        cursor.execute("select count(*) from runs where run_id = %s", (result.run_id,))
        assert cursor.fetchone()[0] == 1
        cursor.execute("select count(*) from event_logs where run_id = %s and dagster_event_type = 'ASSET_MATERIALIZATION'", (result.run_id,))
        assert cursor.fetchone()[0] == 3
        cursor.execute("select count(*) from information_schema.tables where table_name in ('jobs', 'job_ticks', 'instigators')")
        assert cursor.fetchone()[0] == 3


def test_instance_yaml_takes_every_connection_setting_from_the_environment():
    settings = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(value, dict) and set(value) == {"env"} for key, value in settings.items() if key != "scheme")
    assert settings["scheme"] == "postgresql+psycopg2"
