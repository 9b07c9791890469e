"""Headless Chromium, to check that an HTML report renders (its plots included) in a browser.

A page whose HTML is right can still show nothing: a broken SVG, an image the browser will
not decode, a layout that hides it. The test of ``--report-html`` therefore opens the page
in a real browser and reads the screenshot's pixels. The browser is Debian's ``chromium``,
installed once by ``python -m lightir.testing.browser setup`` (with apt-get when run as
root, as :mod:`lightir.lowering.emulation` installs qemu; otherwise it says what to
install). ``$LIGHTIR_CHROMIUM`` names another Chromium or Chrome binary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lightir.errors import LightirError, UsageError
from lightir.system import apt_install

SYSTEM_PACKAGES = ("chromium",)
CANDIDATES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")


class BrowserError(LightirError):
    """The browser could not render the page."""

    exit_code = 1


def find() -> tuple[str | None, str]:
    """The browser's path, or ``(None, why not)`` with the command that fixes it."""
    named = os.environ.get("LIGHTIR_CHROMIUM")
    if named:
        path = shutil.which(named)
        return (path, "") if path else (None, f"LIGHTIR_CHROMIUM={named} is not executable")
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, "no Chromium installed; run: python -m lightir.testing.browser setup"


def screenshot(
    page: str | os.PathLike,
    png: str | os.PathLike,
    *,
    width: int = 1280,
    height: int = 4000,
    timeout: float = 120.0,
) -> Path:
    """Render ``page`` (a local HTML file) headless into ``png``, ``width`` x ``height``."""
    browser, why = find()
    if browser is None:
        raise BrowserError(why)
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="lightir-chromium-") as profile:
        argv = [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(page).resolve().as_uri(),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not png.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BrowserError(f"{browser} did not render {page} (exit {done.returncode}): {tail[0]}")
    return png


def setup(install_system: bool = True, log=print) -> str:
    """Install Chromium with apt-get when none is found; idempotent. Returns its path."""
    browser, _ = find()
    if browser is not None:
        return browser
    apt_install(
        SYSTEM_PACKAGES,
        "the HTML report's browser test (or set LIGHTIR_CHROMIUM)",
        install_system,
        log,
    )
    browser, why = find()
    if browser is None:
        raise UsageError(f"browser setup did not complete: {why}")
    return browser


def main(argv: list[str] | None = None) -> int:
    """``python -m lightir.testing.browser setup|status``."""
    parser = argparse.ArgumentParser(prog="python -m lightir.testing.browser")
    parser.add_argument("command", choices=["setup", "status"])
    parser.add_argument(
        "--no-system", action="store_true", help="never call apt-get; fail if none is installed"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            browser = setup(install_system=not args.no_system)
        else:
            browser, why = find()
            if browser is None:
                print(f"headless browser: not available: {why}")
                return 1
    except LightirError as exc:
        print(f"lightir browser: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"headless browser: ready: {browser}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
