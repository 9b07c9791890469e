"""Tuning measured on other machines through TVM's RPC tracker (``--rpc HOST:PORT:KEY``).

TVM's tracker keeps a queue of device servers per key; MetaSchedule's ``RPCRunner`` asks it
for a server, uploads each candidate kernel, and times it there. lightir builds the
candidates here (cross-compiled for the target) and measures them on the servers, so a
phone or a board tunes the kernels it will run, and a GPU box those for CUDA.

Start the tracker and the servers (``pip install 'lightir[tune]'`` on each machine; the
tracker needs ``tornado``)::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker TRACKER_HOST:9190 --key rk3588   # on the board

then ``lightir-opt model.onnx -p reparam --target arm -o m.so --tune 512 --tuning-db db
--rpc TRACKER_HOST:9190:rk3588``. On an aarch64 board the server needs only TVM's runtime;
lightir cross-compiles with ``aarch64-linux-gnu-g++`` (Debian's ``g++-aarch64-linux-gnu``).

:meth:`RPCTracker.check` asks the tracker before any work: an unreachable tracker, or no
server registered under the key, is a one-line usage error. A server or tracker lost while
tuning ends the tuning with :class:`RPCLost`, naming what was lost; the records measured
until then stay in the database, so a run with the same ``--tuning-db`` goes on from there.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from lightir.errors import LightirError, UsageError

# Words in a runner's error that mean the measurement never reached a device.
SESSION_WAIT = 60.0  # seconds a measurement waits for a server before it counts as lost
RPC_FAILURES = ("rpc", "tracker", "socket", "connect", "session", "timed out", "timeout")


class RPCLost(LightirError):
    """Tuning stopped: the tracker or every server of the key stopped answering."""

    exit_code = 1


@dataclass(frozen=True)
class RPCTracker:
    """Where the tracker listens and which device key to measure on."""

    host: str
    port: int
    key: str
    timeout: float = 10.0

    @classmethod
    def parse(cls, text: str) -> RPCTracker:
        """``HOST:PORT:KEY``."""
        host, sep, rest = text.partition(":")
        port, sep2, key = rest.partition(":")
        if not (sep and sep2 and host and key and port.isdigit()):
            raise UsageError(
                f"--rpc {text}: give HOST:PORT:KEY, the tracker's address and the device key "
                "(python -m tvm.exec.rpc_tracker --port 9190; python -m tvm.exec.rpc_server "
                "--tracker HOST:9190 --key KEY)"
            )
        return cls(host, int(port), key)

    def describe(self) -> str:
        """``HOST:PORT:KEY``."""
        return f"{self.host}:{self.port}:{self.key}"

    def summary(self) -> dict:
        """The tracker's summary; a UsageError when it does not answer in ``timeout``."""
        from tvm import rpc

        try:  # TVM's client retries a refused connection for minutes, logging each retry
            socket.create_connection((self.host, self.port), timeout=self.timeout).close()
        except OSError as exc:
            raise UsageError(
                f"--rpc {self.describe()}: the tracker at {self.host}:{self.port} does not "
                f"answer ({exc.strerror or exc}); start it with python -m tvm.exec.rpc_tracker "
                f"--host 0.0.0.0 --port {self.port}"
            ) from exc
        result: dict = {}
        failure: list[BaseException] = []

        def ask() -> None:
            try:
                result.update(rpc.connect_tracker(self.host, self.port).summary())
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive() or failure or not result:
            why = f"{type(failure[0]).__name__}: {failure[0]}" if failure else "no answer"
            raise UsageError(
                f"--rpc {self.describe()}: the tracker at {self.host}:{self.port} does not "
                f"answer ({why.splitlines()[0][:200]}); start it with python -m "
                f"tvm.exec.rpc_tracker --host 0.0.0.0 --port {self.port}"
            )
        return result

    def servers(self) -> int:
        """Servers registered under the key."""
        summary = self.summary()
        return sum(
            1 for item in summary.get("server_info", []) if item["key"].split(":")[-1] == self.key
        )

    def check(self) -> int:
        """The number of servers to measure on; a UsageError when there are none."""
        count = self.servers()
        if not count:
            raise UsageError(
                f"--rpc {self.describe()}: no server is registered under key '{self.key}'; "
                f"start one on the device: python -m tvm.exec.rpc_server --tracker "
                f"{_reachable(self.host)}:{self.port} --key {self.key}"
            )
        return count

    def runner(self, servers: int):
        """MetaSchedule's RPC runner for this tracker, one worker per server."""
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(
            tracker_host=self.host,
            tracker_port=self.port,
            tracker_key=self.key,
            session_timeout_sec=60,
        )
        return ms.runner.RPCRunner(
            rpc_config=config, max_workers=max(1, servers), f_create_session=create_session
        )


def create_session(config):
    """MetaSchedule's session for one measurement, failing fast when no server is left.

    The default asks the tracker for a server and waits for one to be free: with every
    server gone it waits for ever, and tuning hangs. Servers register over a connection the
    tracker watches, so a server that died is off its list at once; with none under the
    key the measurement fails with an error :func:`lost` recognizes.
    """
    tracker = RPCTracker(config.tracker_host, int(config.tracker_port), config.tracker_key)
    try:
        count = tracker.servers()
    except UsageError as exc:
        raise RuntimeError(f"rpc: {exc}") from exc
    if not count:
        raise RuntimeError(
            f"rpc: no server left under key '{config.tracker_key}' on the tracker at "
            f"{config.tracker_host}:{config.tracker_port}"
        )
    # A server that died between the count and the request leaves the request waiting for
    # ever: bounded here (a measurement is seconds; the session allows SESSION_WAIT).
    session: list = []
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            session.append(config.connect_server())
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(SESSION_WAIT)
    if failure:
        raise RuntimeError(f"rpc: {type(failure[0]).__name__}: {failure[0]}") from failure[0]
    if not session:
        raise RuntimeError(
            f"rpc: no server under key '{config.tracker_key}' took the session in "
            f"{SESSION_WAIT:.0f} s"
        )
    return session[0]


def lost(errors: list[str]) -> bool:
    """Whether every failed measurement of a batch failed for want of a device."""
    return bool(errors) and all(any(w in e.lower() for w in RPC_FAILURES) for e in errors)


def _reachable(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "") else host
