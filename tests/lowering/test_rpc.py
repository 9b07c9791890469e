"""--rpc: tuning measured through TVM's RPC tracker, on loopback servers this test starts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tvm")
pytest.importorskip("tornado")  # TVM's tracker needs it (lightir[tune], lightir[test])

import lightir  # noqa: E402
from lightir.errors import UsageError  # noqa: E402
from lightir.lowering.rpc import RPCLost, RPCTracker, lost  # noqa: E402

KEY = "lightir-loopback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """A tracker and servers on 127.0.0.1, each a process of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.tracker = self._start(
            "tracker", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port),
            "--port-end", str(self.port + 1),
        )  # fmt: skip
        self.servers: list[subprocess.Popen] = []

    def _start(self, name: str, module: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        # A session of its own: a server serves from a child process, which must go too.
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def add_servers(self, count: int) -> None:
        for _ in range(count):
            index = len(self.servers)
            self.servers.append(
                self._start(
                    f"server{index}",
                    "tvm.exec.rpc_server",
                    "--tracker",
                    f"127.0.0.1:{self.port}",
                    "--key",
                    KEY,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(9300 + 20 * index),
                    "--port-end",
                    str(9319 + 20 * index),
                )  # fmt: skip
            )
        tracker = RPCTracker("127.0.0.1", self.port, KEY, timeout=5)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if tracker.servers() >= len(self.servers):
                    return
            except UsageError:
                pass  # the tracker is still starting
            time.sleep(0.5)
        raise RuntimeError(f"the loopback servers did not register: {self.logs()}")

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_servers(self) -> None:
        for server in self.servers:
            self._kill(server)

    def stop(self) -> None:
        self.stop_servers()
        self._kill(self.tracker)

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("*.log")))

    def address(self) -> str:
        return f"127.0.0.1:{self.port}:{KEY}"


@pytest.fixture
def loopback(tmp_path):
    world = Loopback(tmp_path)
    yield world
    world.stop()


def cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightir.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_the_address_is_checked():
    assert RPCTracker.parse("10.0.0.2:9190:rk3588") == RPCTracker("10.0.0.2", 9190, "rk3588")
    for bad in ("10.0.0.2:9190", "host:port:key", ":9190:k"):
        with pytest.raises(UsageError, match="HOST:PORT:KEY"):
            RPCTracker.parse(bad)
    assert lost(["RPCSessionTimeoutError: connect to tracker failed"])
    assert not lost(["RuntimeError: illegal memory access"]) and not lost([])


def test_a_dead_tracker_is_a_one_line_error_before_any_pass(tmp_path):
    out = tmp_path / "m.so"
    done = cli(
        "zoo:digits", "-p", "reparam", "--target", "x86", "-o", out, "--tune", "8",
        "--tuning-db", tmp_path / "db", "--rpc", f"127.0.0.1:{free_port()}:{KEY}",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not answer" in lines[0] and "rpc_tracker" in lines[0]
    assert "fold-bn" not in done.stderr and not out.exists()  # no pass ran


def test_a_key_with_no_server_is_a_one_line_error(loopback, tmp_path):
    loopback.add_servers(0)
    done = cli(
        "zoo:digits", "-p", "reparam", "--target", "x86", "-o", tmp_path / "m.so", "--tune", "8",
        "--tuning-db", tmp_path / "db", "--rpc", loopback.address(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"no server is registered under key '{KEY}'" in done.stderr
    assert "python -m tvm.exec.rpc_server --tracker 127.0.0.1:" in done.stderr


def records(db: Path) -> dict[str, list[float]]:
    """Measured seconds per workload (structural hash) in a MetaSchedule JSON database."""
    workloads = [
        json.loads(line)[0] for line in (db / "database_workload.json").read_text().splitlines()
    ]
    found: dict[str, list[float]] = {}
    for line in (db / "database_tuning_record.json").read_text().splitlines():
        index, (_trace, run_secs, *_) = json.loads(line)
        found.setdefault(workloads[index], []).extend(run_secs or [])
    return found


def test_tuning_over_loopback_rpc_gives_records_local_tuning_gives(loopback, tmp_path):
    """A handful of trials (CI), measured here and on two loopback servers: the servers do
    the measuring, both databases hold measured records for the same kernels, and either
    one builds the model with every kernel tuned. (The candidates themselves differ from
    run to run: MetaSchedule's search is threaded; two local runs share 3 of 17.)"""
    from lightir.lowering import compile_model

    loopback.add_servers(2)
    model = lightir.optimize("zoo:digits", "reparam").model
    trials = {"tune_trials": 18, "tune_goal": False}  # 9 tasks, 2 a task: one batch each
    local = compile_model(model, tmp_path / "a.so", tuning_db=tmp_path / "local", **trials)
    remote = compile_model(
        model, tmp_path / "b.so", tuning_db=tmp_path / "rpc",
        rpc=RPCTracker.parse(loopback.address()), **trials,
    )  # fmt: skip
    assert loopback.logs().count("finish serving") >= 9  # measured there, not here
    tasks = local.metadata["tuning"]["tasks"]
    for result in (local, remote):
        assert result.checked and result.metadata["tuning"]["tuned_now"] == tasks
    here, there = records(tmp_path / "local"), records(tmp_path / "rpc")
    assert len(here) == tasks and set(here) == set(there)
    for times in (*here.values(), *there.values()):
        assert times and 0 < min(times) < 1.0  # each kernel has a candidate that ran
    # The records measured remotely build the model here, every kernel tuned, and it checks.
    again = compile_model(model, tmp_path / "c.so", tuning_db=tmp_path / "rpc")
    assert again.checked and again.metadata["tuning"]["applied"] == tasks


@pytest.mark.slow
def test_tuning_measures_on_two_loopback_servers_and_a_lost_server_keeps_the_records(
    loopback, tmp_path
):
    """Minutes of MetaSchedule (run with -m slow): trials measured on the servers; servers
    killed after the first measured batch end the tuning with RPCLost, records kept."""
    pytest.importorskip("xgboost")
    from lightir.lowering import compile_model

    loopback.add_servers(2)
    rpc = RPCTracker.parse(loopback.address())
    model = lightir.optimize("zoo:digits", "reparam").model
    first = compile_model(
        model, tmp_path / "a.so", "x86", tune_trials=16, tuning_db=tmp_path / "db", rpc=rpc
    )
    assert first.checked and first.metadata["tuning"]["tuned_now"] > 0
    assert "finish serving" in loopback.logs()  # the servers did the measuring

    def kill_after_first_batch(line: str) -> None:
        if line.startswith("tuning ") and loopback.servers[0].poll() is None:
            loopback.stop_servers()

    with pytest.raises(RPCLost, match="records measured are kept") as caught:
        compile_model(
            model, tmp_path / "b.so", "x86", tune_trials=64, tuning_db=tmp_path / "db2",
            rpc=rpc, progress=kill_after_first_batch,
        )  # fmt: skip
    records = (tmp_path / "db2" / "database_tuning_record.json").read_text().splitlines()
    kept = int(str(caught.value).split("the ")[-1].split(" records")[0])
    assert 0 < kept <= len(records)  # the ones that ran; the failed ones are stored too
    assert not (tmp_path / "b.so").exists()
