"""Progress bars: on a terminal (checked under a pseudo-terminal), not in pipes or --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from lightir import zoo


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    images, labels = zoo.digits_test_split()
    path = tmp_path_factory.mktemp("progress") / "digits.npz"
    np.savez(path, input=images[:128], __labels__=labels[:128])
    return path


def lightir_opt(*args, terminal: bool) -> str:
    """Stderr and stdout of lightir-opt, run on a pseudo-terminal or through a pipe."""
    env = {**os.environ, "LIGHTIR_PROGRESS_DELAY": "0"}  # show bars for quick steps too
    command = [sys.executable, "-m", "lightir.cli", *map(str, args)]
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        return done.stdout + done.stderr
    primary, secondary = pty.openpty()
    # A terminal 100 columns wide: a fresh pty has 0, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(command, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(primary)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_progress_and_a_pipe_or_quiet_does_not(calib):
    args = ("zoo:digits", "-p", "prune{ratio=0.3,refit=true},int8", "--calib", calib)
    shown = lightir_opt(*args, terminal=True)
    assert "int8: calibrating" in shown and "prune: ordering channels" in shown
    assert "refit" in shown and "%|" in shown  # tqdm's bar
    assert "drift vs input" in shown  # the table still follows
    piped = lightir_opt(*args, terminal=False)
    assert "int8: calibrating" not in piped and "drift vs input" in piped
    quiet = lightir_opt(*args, "--quiet", terminal=True)
    assert "int8: calibrating" not in quiet and "%|" not in quiet


def test_strength_trials_ranks_and_the_search_show_progress(calib):
    """The other steps that can run long: a lossy pass's strength trials, choosing ranks,
    compress's sensitivity and the candidates it evaluates."""
    args = ("zoo:digits", "-p", "prune,spatial-svd{energy=0.9},compress{max-drop=0.03}")
    shown = lightir_opt(*args, "--calib", calib, "--keep-going", terminal=True)
    for bar in (
        "prune: ratio trials",
        "spatial-svd: choosing ranks",
        "compress: sensitivity",
        "compress: candidates evaluated",
    ):
        assert bar in shown, bar
