"""Local database servers on loopback ports, for the tests and the demo, in three flavours:

* ``mariadb-10.11``: the host's ``mariadbd`` (Debian bookworm's package).
* ``mariadb-11.8`` and ``mysql-9.7``: a server from a newer Debian suite, which needs that suite's libc, so it runs
  chrooted into a root that ``hack/build-databases`` builds once under the cache folder
  (``${WHM_HA_CACHE:-~/.cache/whm-ha}/databases/<flavour>/root``), in a mount namespace of its own where its data dir
  is bound in at `ROOT_DATADIR` (its socket, pid file and error log live there too, so the host reaches them at
  the data dir's own path).

Each server has its own data dir, binary log, GTIDs (MariaDB: strict mode; MySQL: ``gtid_mode=ON``) and server
id. Data dirs are copied from a template initialised once per flavour, so starting several servers takes a few
seconds. Servers may be stopped, killed (SIGKILL) and restarted on the same port and data. A server may also run
inside a network namespace (``netns``), listening on its address there (``bind_host``), and serve TLS with the
certificate and CA bundle it is given (``tls``), optionally refusing clients without it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import pymysql
import pymysql.cursors

from ..lifecycle import die_with_parent

ADMIN_USER = "root"
ADMIN_PASSWORD = "whm-ha-admin"
"""The administrative account created on every local server (host '%')."""

SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")

ROOT_DATADIR = Path("/var/lib/whm-ha/data")
"""Where a chrooted server's data dir is bound in (a mount point in the root, per server in its own namespace)."""

BUILD_COMMAND = "hack/build-databases"

TLS_DIR = "tls"
TLS_CA_FILE = f"{TLS_DIR}/ca.pem"
"""A server's CA bundle, relative to its data dir: servers run in their data dir, so this one relative path names
every server's own bundle on every flavour (a chrooted server sees its data dir at `ROOT_DATADIR`). Replicas verify
their source with it (``MASTER_SSL_CA``/``SOURCE_SSL_CA``)."""
TLS_CERT_FILE = f"{TLS_DIR}/server.pem"
TLS_KEY_FILE = f"{TLS_DIR}/server-key.pem"


class LocalServerError(RuntimeError):
    """A local server could not be set up or started; the message is one readable line."""


def cache_dir() -> Path:
    """The project's cache folder outside the repository (as hack/build-* use it)."""
    return Path(os.environ.get("WHM_HA_CACHE") or Path.home() / ".cache" / "whm-ha")


@dataclass(frozen=True)
class Flavour:
    """A database server product and version, and where its programs come from."""

    name: str
    """``mariadb-10.11``, ``mariadb-11.8`` or ``mysql-9.7``."""
    product: Literal["mariadb", "mysql"]
    """The SQL dialect it speaks (`whm_ha.mysql.dialect.dialect_for`)."""
    host: bool
    """The host's own server; otherwise a root built by hack/build-databases."""

    @property
    def root(self) -> Path | None:
        """The root file system the server runs chrooted in; None for the host's server."""
        return None if self.host else cache_dir() / "databases" / self.name / "root"

    @property
    def server_binary(self) -> str:
        return "mariadbd" if self.product == "mariadb" else "mysqld"

    def binary(self, name: str) -> str:
        """A program's path as the server process sees it (inside the root for a root's flavour)."""
        if self.root is None:
            return find_binary(name)
        for folder in ("/usr/sbin", "/usr/bin"):
            if (self.root / folder.lstrip("/") / name).exists():
                return f"{folder}/{name}"
        raise LocalServerError(f"{self.name}: {name} not found in {self.root}: run {BUILD_COMMAND} {self.name}")

    def client_command(self, name: str) -> list[str]:
        """The command line that runs one of the flavour's client programs (a dump tool, the client) here, outside
        any namespace: a root's program is run by the root's own dynamic loader with the root's libraries, so it
        sees the host's file system (its option files, its network)."""
        if self.root is None:
            return [find_binary(name)]
        program = self.root / self.binary(name).lstrip("/")
        libraries = [self.root / "usr/lib/x86_64-linux-gnu", self.root / "lib/x86_64-linux-gnu"]
        loader = self.root / "lib64/ld-linux-x86-64.so.2"
        return [str(loader), "--library-path", ":".join(map(str, libraries)), str(program)]

    def client_programs(self, directory: Path, names: Iterable[str]) -> str:
        """What to put first on PATH for a process that runs the flavour's client programs ``names`` by name (the
        operator's backup and restore tasks): for a root's flavour, ``directory`` filled with a script per program
        that runs it as `client_command` does; "" for the host's flavour, whose programs are on PATH already."""
        if self.root is None:
            return ""
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            script = directory / name
            script.write_text(f'#!/bin/sh\nexec {shlex.join(self.client_command(name))} "$@"\n')
            script.chmod(0o755)
        return str(directory)

    def missing(self) -> str | None:
        """Why this flavour cannot run here (one line naming the fix), None when it can."""
        try:
            self.binary(self.server_binary)
        except LocalServerError as exc:
            return str(exc)
        return None


FLAVOURS = {
    f.name: f
    for f in (
        Flavour("mariadb-10.11", "mariadb", host=True),
        Flavour("mariadb-11.8", "mariadb", host=False),
        Flavour("mysql-9.7", "mysql", host=False),
    )
}
HOST_MARIADB = FLAVOURS["mariadb-10.11"]


def flavour(name: str) -> Flavour:
    """The flavour by name, or LocalServerError listing the known ones."""
    try:
        return FLAVOURS[name]
    except KeyError:
        raise LocalServerError(f"unknown database flavour {name!r} (known: {', '.join(FLAVOURS)})") from None


def find_binary(name: str) -> str:
    """The path of a host MariaDB program, or LocalServerError naming the package to install."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SEARCH_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    raise LocalServerError(f"{name} not found: install MariaDB (apt-get install mariadb-server)")


READY_LINE = "ready for connections"
"""What every flavour logs once it listens (MariaDB's Note, MySQL's System line)."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_args() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


def _in_root(flavour: Flavour, datadir: Path, command: list[str]) -> list[str]:
    """``command`` run chrooted into the flavour's root, in a private mount namespace with /proc, a /tmp of its own
    and ``datadir`` bound at `ROOT_DATADIR`. Every step execs in place, so the process is the server itself
    (kill() reaches it) and the mounts vanish with it. Unchanged for the host's flavour."""
    if flavour.root is None:
        return command
    script = (
        'mount -t proc proc "$1/proc" && mount -t tmpfs tmpfs "$1/tmp" && mount --bind "$2" "$1$3" && '
        'root=$1 && shift 3 && exec chroot "$root" "$@"'
    )
    unshare = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec", script, "sh"]
    return [*unshare, str(flavour.root), str(datadir), str(ROOT_DATADIR), *command]


def _run_init(flavour: Flavour, datadir: Path, command: list[str], timeout: float) -> None:
    result = subprocess.run(
        _in_root(flavour, datadir, command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        errors = [ln for ln in lines if "ERROR" in ln] or lines[:1] or ["no output"]
        raise LocalServerError(f"{flavour.name}: {Path(command[0]).name} failed: {errors[-1]}")


def init_template(path: Path, timeout: float = 60, flavour: Flavour = HOST_MARIADB) -> Path:
    """Create a data dir with the admin account, to copy for each server of the flavour."""
    if (path / "mysql").exists():
        return path
    why = flavour.missing()
    if why:
        raise LocalServerError(why)
    path.mkdir(parents=True, exist_ok=True)
    inner = path if flavour.root is None else ROOT_DATADIR
    if flavour.product == "mariadb":
        install = [
            flavour.binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={inner}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *_user_args(),
        ]
    else:
        # root@localhost without a password; the admin account is created below.
        install = [flavour.binary("mysqld"), "--no-defaults", "--initialize-insecure", f"--datadir={inner}"]
        install += [*_user_args(), f"--log-error={inner / 'error.log'}", "--innodb-redo-log-capacity=32M"]
    _run_init(flavour, path, install, timeout)
    bootstrap = LocalServer(datadir=path, server_id=1, log_bin=False, admin_password="", flavour=flavour)
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


@dataclass(frozen=True, repr=False)
class ServerTLS:
    """The PEM texts a server serves TLS with."""

    ca: str
    """The CAs it trusts: what its replicas verify their source with (`TLS_CA_FILE`); a bundle during a change."""
    cert: str
    """Its certificate chain."""
    key: str
    """Its private key."""


@dataclass
class LocalServer:
    """One server process of a flavour bound to 127.0.0.1, or, with ``netns``, inside that network namespace
    bound to ``bind_host`` and the namespace's own loopback."""

    datadir: Path
    server_id: int
    port: int = field(default_factory=free_port)
    log_bin: bool = True
    admin_password: str = ADMIN_PASSWORD
    extra_args: tuple[str, ...] = ()
    netns: str | None = None
    bind_host: str = "127.0.0.1"
    flavour: Flavour = HOST_MARIADB
    dies_with_parent: bool = False
    """The kernel kills the server when the thread that started it ends (``whm-ha demo``: its main thread)."""
    tls: ServerTLS | None = None
    """Serve TLS with these files (written into the data dir at start, and by `install_tls`)."""
    require_secure_transport: bool = False
    """Refuse clients that do not use TLS (needs ``tls``)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _served: bool = field(default=False, repr=False)
    """The server has accepted a connection on ``port`` (which from then on stays its port)."""

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self.bind_host

    @classmethod
    def from_template(cls, template: Path, datadir: Path, server_id: int, **kwargs: object) -> Self:
        """A server whose data dir is a fresh copy of the template. MySQL keeps its server UUID in auto.cnf: without
        it each copy makes its own (replication refuses a source with the replica's UUID)."""
        shutil.copytree(template, datadir)
        (datadir / "auto.cnf").unlink(missing_ok=True)
        return cls(datadir=datadir, server_id=server_id, **kwargs)  # type: ignore[arg-type]

    @property
    def socket_path(self) -> Path:
        return self.datadir / "mysqld.sock"

    @property
    def error_log(self) -> Path:
        return self.datadir / "error.log"

    @property
    def inner_datadir(self) -> Path:
        """The data dir as the server process sees it."""
        return self.datadir if self.flavour.root is None else ROOT_DATADIR

    def command(self) -> list[str]:
        """The server's command line (without the ``ip netns exec`` prefix and the chroot around it)."""
        bind = f"{self.bind_host},127.0.0.1" if self.netns and self.bind_host != "127.0.0.1" else self.bind_host
        inner = self.inner_datadir
        args = [
            self.flavour.binary(self.flavour.server_binary),
            "--no-defaults",
            *_user_args(),
            f"--datadir={inner}",
            f"--port={self.port}",
            f"--bind-address={bind}",
            f"--socket={inner / self.socket_path.name}",
            f"--pid-file={inner / 'mysqld.pid'}",
            f"--log-error={inner / self.error_log.name}",
            f"--server-id={self.server_id}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--performance-schema=OFF",
            "--max-connections=200",
            "--character-set-server=utf8mb4",
        ]
        if self.flavour.product == "mariadb":
            args.append("--innodb-log-file-size=16M")
            if self.log_bin:
                args += ["--log-bin=mysql-bin", "--binlog-format=ROW", "--log-slave-updates=ON"]
                args.append("--gtid-strict-mode=ON")
        else:
            # No X Protocol listener (every server would want port 33060); redo capacity replaces the log size.
            # Row-based binary logging is the default (binlog_format is deprecated). The semi-sync plugins are
            # loaded at startup, as the README asks: a super_read_only replica refuses INSTALL PLUGIN.
            args += ["--mysqlx=OFF", "--innodb-redo-log-capacity=32M"]
            args += ["--plugin-load-add=semisync_source.so", "--plugin-load-add=semisync_replica.so"]
            if self.log_bin:
                args += ["--log-bin=mysql-bin", "--log-replica-updates=ON"]
                args += ["--gtid-mode=ON", "--enforce-gtid-consistency=ON"]
            else:
                args.append("--skip-log-bin")
        if self.tls is not None:
            args += [f"--ssl-ca={TLS_CA_FILE}", f"--ssl-cert={TLS_CERT_FILE}", f"--ssl-key={TLS_KEY_FILE}"]
        if self.require_secure_transport:
            args.append("--require-secure-transport=ON")
        if self.log_bin:
            args += [
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
        if self.tls is not None:
            self.install_tls(self.tls)
        # ip netns exec (and the chroot around a root's server) exec the command in place: the process is the
        # server itself, so kill() reaches it.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        logged = self.error_log.stat().st_size if self.error_log.exists() else 0
        self.process = subprocess.Popen(
            [*prefix, *_in_root(self.flavour, self.datadir, self.command())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if self.dies_with_parent else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                errors = self._errors_since(logged)
                if "Address already in use" in errors and not self._served:
                    # free_port's port was taken before the server bound it (another process's ephemeral port);
                    # before anyone has been told this server's port, another one does as well.
                    self.port = free_port()
                    self.start(timeout, connect_as_socket)
                    return
                raise LocalServerError(f"{self.flavour.name} on port {self.port} exited: {errors}")
            if not self._logged_since(logged, READY_LINE):
                # Until this server says it listens, a client on its port may reach another one: a server of another
                # process given the same free port, while this one is still starting and has yet to fail its bind.
                time.sleep(0.05)
                continue
            try:
                conn = self.connect_socket() if connect_as_socket else self.connect(connect_timeout=1)
                conn.close()
                self._served = True
                return
            except pymysql.MySQLError as exc:
                last_error = exc
                time.sleep(0.05)
        self.kill()
        raise LocalServerError(f"{self.flavour.name} on port {self.port} not ready after {timeout}s: {last_error}")

    def _logged_since(self, offset: int, text: str) -> bool:
        try:
            with self.error_log.open("rb") as log:
                log.seek(offset)
                return text.encode() in log.read()
        except OSError:
            return False

    def _errors_since(self, offset: int) -> str:
        """The last error lines the server logged after ``offset`` (the last alone is often just "Aborting")."""
        try:
            with self.error_log.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "no error log"
        lines = [ln for ln in text.splitlines() if "ERROR" in ln]
        return " / ".join(lines[-3:]) if lines else "see " + str(self.error_log)

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

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """The rows of one statement, on a connection of its own as the admin account."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def install_tls(self, tls: ServerTLS) -> None:
        """Write the TLS files into the data dir, each replaced in one step (a server reloading them, or a replica
        reading the CA bundle, never sees half a file); a running server serves them once it reloads them
        (`Dialect.reload_tls`)."""
        folder = self.datadir / TLS_DIR
        folder.mkdir(exist_ok=True)
        for name, text in ((TLS_CA_FILE, tls.ca), (TLS_CERT_FILE, tls.cert), (TLS_KEY_FILE, tls.key)):
            target = self.datadir / name
            partial = target.with_suffix(".new")
            partial.write_text(text)
            partial.chmod(0o600)
            os.replace(partial, target)
        self.tls = tls

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


class LocalMariaDB(LocalServer):
    """A server of the host's MariaDB (flavour ``mariadb-10.11``), the name the tests and the demo have always used;
    ``flavour=`` makes it another."""
