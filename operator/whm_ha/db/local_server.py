"""Local ``mariadbd`` processes on loopback ports, for the tests and the demo.

Each server has its own data dir, binary log, GTID strict mode and server id. Data dirs are
copied from a template initialised once, so starting several servers takes a few seconds.
Servers may be stopped, killed (SIGKILL) and restarted on the same port and data. A server may
also run inside a network namespace (``netns``), listening on its address there (``bind_host``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pymysql.cursors

ADMIN_USER = "root"
ADMIN_PASSWORD = "whm-ha-admin"
"""The administrative account created on every local server (host '%')."""

SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")


class LocalServerError(RuntimeError):
    """A local server could not be set up or started; the message is one readable line."""


def find_binary(name: str) -> str:
    """The path of a MariaDB program, or LocalServerError naming the package to install."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SEARCH_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    raise LocalServerError(f"{name} not found: install MariaDB (apt-get install mariadb-server)")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_args() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


def init_template(path: Path, timeout: float = 60) -> Path:
    """Create a data dir with the admin account, to copy for each server."""
    if (path / "mysql").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    install = [
        find_binary("mariadb-install-db"),
        "--no-defaults",
        f"--datadir={path}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        *_user_args(),
    ]
    result = subprocess.run(install, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LocalServerError(f"mariadb-install-db failed: {last[0]}")
    bootstrap = LocalMariaDB(datadir=path, server_id=1, log_bin=False, admin_password="")
    bootstrap.start(timeout=timeout, connect_as_socket=True)
    try:
        conn = bootstrap.connect_socket()
        with conn.cursor() as cur:
            cur.execute("SET sql_log_bin = 0")
            cur.execute("SELECT host FROM mysql.user WHERE user = 'root' AND host NOT IN ('localhost', '%')")
            for (host,) in cur.fetchall():
                cur.execute("DROP USER 'root'@%s", (host,))
            cur.execute(f"CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION")
        conn.close()
    finally:
        bootstrap.stop()
    return path


@dataclass
class LocalMariaDB:
    """One mariadbd process bound to 127.0.0.1, or, with ``netns``, inside that network namespace
    bound to ``bind_host`` and the namespace's own loopback."""

    datadir: Path
    server_id: int
    port: int = field(default_factory=free_port)
    log_bin: bool = True
    admin_password: str = ADMIN_PASSWORD
    extra_args: tuple[str, ...] = ()
    netns: str | None = None
    bind_host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self.bind_host

    @classmethod
    def from_template(cls, template: Path, datadir: Path, server_id: int, **kwargs: object) -> LocalMariaDB:
        """A server whose data dir is a fresh copy of the template."""
        shutil.copytree(template, datadir)
        return cls(datadir=datadir, server_id=server_id, **kwargs)  # type: ignore[arg-type]

    @property
    def socket_path(self) -> Path:
        return self.datadir / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.datadir / "error.log"

    def command(self) -> list[str]:
        """The mariadbd command line (without the ``ip netns exec`` prefix)."""
        bind = f"{self.bind_host},127.0.0.1" if self.netns and self.bind_host != "127.0.0.1" else self.bind_host
        args = [
            find_binary("mariadbd"),
            "--no-defaults",
            *_user_args(),
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={bind}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.datadir / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--server-id={self.server_id}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--performance-schema=OFF",
            "--max-connections=200",
            "--character-set-server=utf8mb4",
        ]
        if self.log_bin:
            args += [
                "--log-bin=mysql-bin",
                "--binlog-format=ROW",
                "--log-slave-updates=ON",
                "--gtid-strict-mode=ON",
                "--sync-binlog=1",
                "--innodb-flush-log-at-trx-commit=1",
                f"--relay-log=relay-{self.server_id}",
            ]
        return args + list(self.extra_args)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30, connect_as_socket: bool = False) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        # ip netns exec execs the command in place: the process is mariadbd itself, so kill() reaches it.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.process = subprocess.Popen(
            [*prefix, *self.command()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalServerError(f"mariadbd on port {self.port} exited: {self._last_log_line()}")
            try:
                conn = self.connect_socket() if connect_as_socket else self.connect(connect_timeout=1)
                conn.close()
                return
            except pymysql.MySQLError as exc:
                last_error = exc
                time.sleep(0.05)
        self.kill()
        raise LocalServerError(f"mariadbd on port {self.port} not ready after {timeout}s: {last_error}")

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.error_log.read_text(errors="replace").splitlines() if "ERROR" in ln]
        except OSError:
            return "no error log"
        return lines[-1] if lines else "see " + str(self.error_log)

    def connect(
        self, database: str | None = None, connect_timeout: float = 5
    ) -> pymysql.Connection[pymysql.cursors.Cursor]:
        """A TCP connection as the admin account (autocommit)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=ADMIN_USER,
            password=self.admin_password,
            database=database,
            autocommit=True,
            connect_timeout=connect_timeout,
        )

    def connect_socket(self) -> pymysql.Connection[pymysql.cursors.Cursor]:
        """A connection over the Unix socket as root (before the admin account exists)."""
        return pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)

    def stop(self, timeout: float = 30) -> None:
        """Shut down cleanly (SIGTERM), killing after the timeout."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, timeout: float = 30) -> None:
        """Stop (if running) and start again on the same port and data dir."""
        self.stop()
        self.start(timeout=timeout)
