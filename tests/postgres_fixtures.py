"""A throwaway PostgreSQL server for the tests (imported by tests/conftest.py).

``postgres_server`` (session scope): ``initdb`` + ``pg_ctl`` from ``$CHEXTRIEV_PG_BIN``
(default ``/usr/lib/postgresql/15/bin``) into a temporary folder, listening on 127.0.0.1 and a
free port, unix sockets in that folder; run as the ``postgres`` user when the tests run as root
(PostgreSQL refuses to run as root); stopped at the end of the session. ``postgres_url``
(function scope): a fresh database on it (CREATE DATABASE is cheap), as a plain
``postgresql://user@host:port/db`` URL, the spelling users type.

Skips with the reason when the binaries are missing, unless ``CHEXTRIEV_REQUIRE_POSTGRES=1``
(set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("CHEXTRIEV_PG_BIN", "/usr/lib/postgresql/15/bin"))
REQUIRE = "CHEXTRIEV_REQUIRE_POSTGRES"
USER = "chextriev"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    data_dir: Path
    pg_options: str = ""  # the postgres options it was started with (port, sockets, fsync)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE; returns its ``postgresql://`` URL."""
        import psycopg

        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _unavailable(reason: str):
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"PostgreSQL required ({REQUIRE}=1) but {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason} (apt-get install postgresql, or set "
                "CHEXTRIEV_PG_BIN to the folder holding initdb and pg_ctl)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres(root: Path, *, durable: bool = False) -> tuple[PostgresServer, dict]:
    """initdb + pg_ctl start under ``root``; returns the server and the subprocess options.

    ``durable=False`` (tests) turns fsync off; benchmarks pass ``durable=True``."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            _unavailable(f"{PG_BIN / tool} does not exist")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed")
    run_as: dict = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("the tests run as root and there is no 'postgres' user to run it as")
        run_as = {"user": account.pw_uid, "group": account.pw_gid}
        os.chmod(root, 0o755)
        shutil.chown(root, account.pw_uid, account.pw_gid)
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    for folder in (sockets,):
        folder.mkdir()
        if run_as:
            shutil.chown(folder, run_as["user"], run_as["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                    "--no-sync", "-E", "UTF8", "--no-instructions"], check=True,
                   capture_output=True, env=env, cwd=root, **run_as)
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between bind() and the server's start
        port = _free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=100"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        result = subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                 str(log), "-w", "-t", "60", "start"], capture_output=True,
                                text=True, env=env, cwd=root, check=False, **run_as)
        if result.returncode == 0:
            server = PostgresServer("127.0.0.1", port, USER, data, options)
            _wait_ready(server)
            return server, {"env": env, "cwd": root, **run_as}
        last_error = result.stderr + (log.read_text()[-2000:] if log.exists() else "")
    raise RuntimeError(f"PostgreSQL did not start: {last_error}")


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=server.host, port=server.port, user=server.user,
                                 dbname="postgres", connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pg_ctl(server: PostgresServer, options: dict, action: str) -> None:
    """``pg_ctl restart|stop|start`` of a running test server (fast shutdown: open sessions
    are ended, as a hospital's database restart or failover ends them), waiting until done;
    ``start`` and ``restart`` keep its port and settings."""
    command = [str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-w", "-t", "60"]
    if action in ("stop", "restart"):
        command += ["-m", "fast"]
    if action in ("start", "restart"):
        command += ["-o", server.pg_options, "-l", str(server.data_dir.parent / "postgres.log")]
    subprocess.run(command + [action], capture_output=True, check=True, **options)
    if action != "stop":
        _wait_ready(server)


def stop_postgres(server: PostgresServer, options: dict) -> None:
    subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "-w",
                    "stop"], capture_output=True, check=False, **options)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of its own for this test session (see the module docstring)."""
    # Not under pytest's basetemp: that tree is private to root (0700) and the server runs as
    # the postgres user.
    root = Path(tempfile.mkdtemp(prefix="chextriev-pg-"))
    try:
        server, options = start_postgres(root)
        try:
            yield server
        finally:
            stop_postgres(server, options)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres():
    """``(server, subprocess options)`` of a PostgreSQL server of this test alone, for tests
    that restart, stop and start it (:func:`pg_ctl`); stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="chextriev-pg-own-"))
    try:
        server, options = start_postgres(root)
        try:
            yield server, options
        finally:
            stop_postgres(server, options)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database: ``postgresql://chextriev@127.0.0.1:PORT/t_<random>``."""
    return postgres_server.create_database()


BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def catalog_url(request, tmp_path) -> str | None:
    """Run a test on both catalog backends: None (SQLite in the index folder, the default)
    and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").create_database()
