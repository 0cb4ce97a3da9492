"""One crash scenario's world: a copy of the generated sources, its own Dagster instance, and the nightly run
launched as the schedule launches it, in its own process group so that it can be killed whole.

Layout of a scenario folder: `data/` (SEM_DATA_DIR: sources, warehouse, analytics file, outbox, audit log),
`dagster_home/` (the project's dagster.yaml: run storage, pools, run monitoring), `run_config.yaml`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.orchestration import settings

DAGSTER = Path(sys.executable).with_name("dagster")
# The crash test's own pseudonymisation key (tokens only need to be the same across its runs).
HARNESS_KEY_HEX = "c7" * 32
RUN_TIMEOUT_S = 900
TRANSFER_AUDITED = '"action":"transfer.outside_eu"'


@dataclass
class Launch:
    process: subprocess.Popen
    started: float
    log: Path


class World:
    """A scenario folder; `launch()` starts the nightly for `as_of`, `kill()` SIGKILLs its process group."""

    def __init__(self, root: Path, sources: Path, as_of: dt.date) -> None:
        self.root, self.as_of = root, as_of
        self.data, self.home = root / "data", root / "dagster_home"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(sources, self.data / "sources")
        self.home.mkdir(parents=True)
        shutil.copy(settings.PROJECT_ROOT / "dagster.yaml", self.home / "dagster.yaml")
        # Storage created here, once: the harness reading the instance while `dagster job execute` creates it
        # raced on the schema ("more than one head") and failed either side.
        import dagster as dg

        with dg.DagsterInstance.from_config(str(self.home)):
            pass
        self.runs = 0

    def _run_config(self) -> Path:
        from pipelines.definitions import defs
        from sensors.schedules import as_of_run_config

        path = self.root / "run_config.yaml"
        path.write_text(yaml.safe_dump(as_of_run_config(defs.resolve_job_def("nightly_job"), self.as_of)))
        return path

    def launch(self) -> Launch:
        """`dagster job execute` of nightly_job with the schedule's tags and config (the project's executor)."""
        from pipelines.orchestration.partitions import nightly_partition
        from pipelines.orchestration.runs import AS_OF_TAG

        self.runs += 1
        log = self.root / f"run-{self.runs}.log"
        tags = {AS_OF_TAG: self.as_of.isoformat(), "dagster/partition": nightly_partition(self.as_of)}
        command = [str(DAGSTER), "job", "execute", "-m", "pipelines.definitions", "-j", "nightly_job",
                   "-c", str(self._run_config()), "--tags", json.dumps(tags)]
        env = {**os.environ, "SEM_DATA_DIR": str(self.data), "DAGSTER_HOME": str(self.home),
               "SEM_PSEUDONYMISATION_KEY": HARNESS_KEY_HEX, "DAGSTER_DISABLE_TELEMETRY": "yes"}
        for var in ("SEM_WAREHOUSE_PATH", "SEM_ANALYTICS_PATH", "SEM_MEMBERS_URL", "SEM_PROSPECTS_URL",
                    "SEM_NAVIGATION_DIR", "SEM_OUTBOX_DIR", "SEM_EXPORTS_DIR", "SEM_AUDIT_LOG", "SEM_REPORTS_DIR"):
            env.pop(var, None)  # everything under this world's data folder
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=settings.PROJECT_ROOT, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return Launch(process, time.monotonic(), log)

    def kill(self, launch: Launch) -> None:
        """SIGKILL the run's whole process group (run worker, fork server, step processes) and wait it out."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.process.pid, signal.SIGKILL)
        launch.process.wait()
        while True:
            try:
                os.killpg(launch.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def wait(self, launch: Launch, timeout_s: float = RUN_TIMEOUT_S) -> str:
        """Wait for a run to end on its own: 'exit 0', 'exit N', or 'timeout' (then it is killed)."""
        try:
            code = launch.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(launch)
            return "timeout"
        return f"exit {code}"

    def source_commits(self) -> tuple[frozenset[str], ...] | None:
        """What push-back has committed, read from the sources themselves: the decision ids recorded as applied
        in the member system, the prospecting platform and the navigation manifest (None while a source is
        locked by a writer or a file is being swapped: ask again)."""
        applied = []
        for name in ("members.db", "prospects.db"):
            try:
                con = sqlite3.connect(f"file:{self.data / 'sources' / name}?mode=ro", uri=True, timeout=0.2)
                try:
                    rows = con.execute("SELECT decision_id FROM privacy_applied_decisions").fetchall()
                finally:
                    con.close()
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):
                    return None
                rows = []  # no push-back yet
            applied.append(frozenset(r[0] for r in rows))
        manifest = self.data / "sources" / "navigation" / "_privacy_applied_decisions.json"
        try:
            applied.append(frozenset(json.loads(manifest.read_text())["decisions"]) if manifest.exists()
                           else frozenset())
        except (OSError, ValueError):
            return None
        return tuple(applied)

    def navigation_files(self) -> dict[str, int]:
        """Each Parquet file of the navigation log and its modification time: push-back swaps in a rewritten file
        (one commit of that file), before recording its decisions in the manifest."""
        folder = self.data / "sources" / "navigation"
        files = {}
        for path in folder.rglob("*.parquet"):
            with contextlib.suppress(FileNotFoundError):
                files[str(path.relative_to(folder))] = path.stat().st_mtime_ns
        return files

    def transfer_marks(self) -> frozenset[str] | None:
        """How far the transfer deliveries got: each file written under outbox/transfers (temporary files aside)
        and each `transfer.outside_eu` audit entry (None while the audit log is being appended to: ask again)."""
        folder = self.data / "outbox" / "transfers"
        marks = {f"{p.relative_to(folder)} written" for p in (folder.rglob("*") if folder.exists() else ())
                 if p.is_file() and not p.name.startswith(".") and p.suffix != ".tmp"}
        audit = self.data / "audit" / "audit.jsonl"
        try:
            lines = audit.read_text().splitlines() if audit.exists() else []
            marks |= {f"{json.loads(line)['decision_id']} audited" for line in lines if TRANSFER_AUDITED in line}
        except (OSError, ValueError):
            return None
        return frozenset(marks)


def plant_transfer(sources: Path, as_of: dt.date, recipient: str = "morocco_complaints_provider") -> None:
    """Give the night a transfer to deliver whatever the world's size: one complaint, still open, handled by the
    provider in Morocco, of a member with a running contract, no restriction and no rights request."""
    con = sqlite3.connect(sources / "members.db")
    try:
        with con:
            con.execute("""
                INSERT INTO interactions (interaction_id, member_id, kind, channel, handled_by, subject, body,
                                          created_at, closed_at)
                SELECT (SELECT max(interaction_id) + 1 FROM interactions), min(c.member_id), 'complaint', 'email', ?,
                       'Délai de traitement', 'Réclamation en cours', ?, NULL
                FROM contracts c JOIN members m USING (member_id)
                WHERE c.status = 'active' AND m.restricted_at IS NULL
                  AND c.member_id NOT IN (SELECT member_id FROM rights_requests WHERE member_id IS NOT NULL)""",
                        [recipient, f"{as_of - dt.timedelta(days=12)} 10:00:00"])
    finally:
        con.close()
