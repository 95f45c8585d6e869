"""A real PostgreSQL 15 for tests, started from Debian's binaries in a throw-away folder:
the kit's database module and an "external database" site are tested against it.

    with LocalPostgres(listen="127.0.0.1") as pg:
        pg.sql("create role moodle login password 'x'")
        print(pg.port, pg.admin_password)
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """Why no PostgreSQL can be started here, or None."""
    if not (BIN / "initdb").is_file():
        return "PostgreSQL 15 is not installed (apt-get install postgresql-15; scripts/test.sh does)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user (Debian's postgresql-15 package makes it)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    def __init__(self, listen: str = "127.0.0.1", port: int | None = None) -> None:
        self.listen, self.port = listen, port or free_port()
        self.admin_password = secrets.token_urlsafe(16)
        self.folder = Path(tempfile.mkdtemp(prefix="kit-test-pg-"))
        self.data = self.folder / "data"

    def _as_postgres(self, *cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], input=stdin, capture_output=True,
                                text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {result.stderr.strip()[-500:]}")
        return result

    def __enter__(self) -> "LocalPostgres":
        shutil.chown(self.folder, "postgres", "postgres")
        pwfile = self.folder / "pw"
        pwfile.write_text(self.admin_password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=peer",
                          "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o",
                          f"-c listen_addresses='{self.listen}' -c port={self.port} "
                          f"-c unix_socket_directories='{self.folder}' "
                          # A throwaway server: no flush to disk per commit (a Moodle install
                          # on it commits thousands of times); what it stores is not under test.
                          "-c fsync=off -c synchronous_commit=off -c full_page_writes=off", "start")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def sql(self, text: str, *, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the local socket (the test's own admin access)."""
        result = self._as_postgres(str(BIN.parent / "bin" / "psql"), "-h", str(self.folder), "-p", str(self.port),
                                   "-d", dbname, "-v", "ON_ERROR_STOP=1", "-tAX", stdin=text)
        return result.stdout.strip()

    def wait(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.listen, self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start listening")


#: The few Moodle tables the kit's queries read, as Moodle 4.5 creates them (lib/db/install.xml).
MOODLE_TABLES = """
create table mdl_config (id bigserial primary key, name varchar(255) not null unique, value text not null);
create table mdl_task_adhoc (id bigserial primary key, component varchar(255) not null default '',
  classname varchar(255) not null, nextruntime bigint not null, faildelay bigint, customdata text,
  userid bigint, blocking smallint not null default 0, timecreated bigint not null default 0,
  timestarted bigint, hostname varchar(255), pid bigint, attemptsavailable smallint, firststartingtime bigint);
"""
