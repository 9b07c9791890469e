"""Debian packages a setup step installs (the ARM emulator, the report test's browser)."""

from __future__ import annotations

import os
import shutil
import subprocess

from lightir.errors import UsageError


def apt_install(packages: tuple[str, ...], needed_for: str, allowed: bool = True, log=print):
    """Install ``packages`` with apt-get when allowed and root; else say what to install."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not allowed or not is_root or shutil.which("apt-get") is None:
        raise UsageError(
            f"{needed_for} needs {' and '.join(packages)}; install them "
            f"(Debian/Ubuntu: sudo apt-get install {' '.join(packages)})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    log(f"installing {' '.join(packages)} with apt-get")
    for step in (["apt-get", "update", "-qq"], command):
        done = subprocess.run(step, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UsageError(
                f"`{' '.join(step)}` failed: {last[0]}; install {' '.join(packages)} by hand"
            )
