"""Run aarch64 libraries on this x86 machine under qemu-user, to check their numbers.

An ARM build is only proven equal to the ONNX model once it has run. Here it runs under
``qemu-aarch64``: a small C++ program (``emulated_runner.cc``), cross-built against the TVM
runtime of the aarch64 ``apache-tvm`` / ``apache-tvm-ffi`` wheels (same versions as the
installed ones), loads the library, runs its ``main`` and writes the outputs back. Emulation
gives numbers, never timings.

What it needs, installed once by ``python -m lightir.lowering.emulation setup``:

* Debian's ``qemu-user`` and ``g++-aarch64-linux-gnu`` (the latter brings the aarch64 C and
  C++ libraries in ``/usr/aarch64-linux-gnu``, which qemu uses as the sysroot). ``setup``
  installs them with apt-get when it runs as root, and otherwise says what to install;
* the aarch64 runtime libraries and headers, taken from the two wheels with ``pip download``
  into ``~/.cache/lightir`` (or ``$LIGHTIR_CACHE``), and the runner built there.

:func:`find` returns the emulator when all of it is in place, and the reason when not.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightir.errors import LightirError, UsageError
from lightir.system import apt_install

QEMU = "qemu-aarch64"
CROSS_CXX = "aarch64-linux-gnu-g++"
SYSROOT = Path("/usr/aarch64-linux-gnu")
SYSTEM_PACKAGES = ("qemu-user", "g++-aarch64-linux-gnu")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")
RUNNER_SOURCE = Path(__file__).with_name("emulated_runner.cc")
# DLPack type codes: int 0, uint 1, float 2, bool 6.
_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}
_NUMPY_KINDS = {code: kind for kind, code in _DL_CODES.items()}


class EmulationError(LightirError):
    """The emulated run failed (the library crashed, or the runner could not start)."""

    exit_code = 1


@dataclass(frozen=True)
class Emulator:
    """qemu-aarch64 plus a runner built against the aarch64 TVM runtime."""

    qemu: str
    sysroot: Path
    runtime: Path  # holds lib/ with libtvm_runtime.so and libtvm_ffi.so
    runner: Path

    def describe(self) -> str:
        """One line for notes and messages."""
        return f"qemu-aarch64 ({self.qemu}), TVM runtime {self.runtime}"

    def run(
        self, library: str | os.PathLike, inputs: list[np.ndarray], timeout: float = 600.0
    ) -> list[np.ndarray]:
        """Outputs of the library's ``main`` on ``inputs`` (in the order ``main`` takes them)."""
        with tempfile.TemporaryDirectory(prefix="lightir-qemu-") as tmp:
            argv = [self.qemu, "-L", str(self.sysroot), str(self.runner)]
            argv += [str(Path(library).resolve()), f"{tmp}/out"]
            for index, array in enumerate(inputs):
                array = np.ascontiguousarray(array)
                path = Path(tmp) / f"in{index}.bin"
                array.astype(array.dtype.newbyteorder("<"), copy=False).tofile(path)
                code = _DL_CODES.get(array.dtype.kind)
                if code is None:
                    raise UsageError(f"input {index}: dtype {array.dtype} cannot be emulated")
                argv += [str(path), str(code), str(array.dtype.itemsize * 8), str(array.ndim)]
                argv += [str(d) for d in array.shape]
            env = {**os.environ, "LD_LIBRARY_PATH": str(self.runtime / "lib")}
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise EmulationError(
                    f"{library}: the emulated run took over {timeout:.0f}s; check a smaller "
                    "input or build for x86"
                ) from exc
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise EmulationError(
                    f"{library}: the library failed under qemu-aarch64 (exit "
                    f"{done.returncode}): {last}"
                )
            return [_read_output(tmp, line) for line in done.stdout.splitlines() if line]


def _read_output(tmp: str, line: str) -> np.ndarray:
    index, code, bits, ndim, *dims = (int(v) for v in line.split())
    assert len(dims) == ndim, line
    kind = _NUMPY_KINDS[code]
    dtype = np.dtype(bool) if kind == "b" else np.dtype(f"<{kind}{bits // 8}")
    return np.fromfile(f"{tmp}/out.{index}.bin", dtype=dtype).reshape(dims)


def cache_dir() -> Path:
    """Where the aarch64 runtime and runner live, per TVM version."""
    root = Path(os.environ.get("LIGHTIR_CACHE", Path.home() / ".cache" / "lightir"))
    tvm, ffi = _version("apache-tvm"), _version("apache-tvm-ffi")
    return root / f"aarch64-tvm-{tvm}-ffi-{ffi}"


def find() -> tuple[Emulator | None, str]:
    """The emulator, or ``(None, why not)`` naming what is missing and the command to fix it."""
    fix = "run: python -m lightir.lowering.emulation setup"
    qemu = shutil.which(QEMU)
    if qemu is None:
        return None, f"{QEMU} is not installed; {fix}"
    if not (SYSROOT / "lib").is_dir():
        return None, f"no aarch64 sysroot in {SYSROOT}; {fix}"
    runtime = cache_dir()
    runner = runtime / "runner"
    if not runner.exists() or not (runtime / "lib" / "libtvm_runtime.so").exists():
        return None, f"the aarch64 TVM runtime is not in {runtime}; {fix}"
    return Emulator(qemu, SYSROOT, runtime, runner), ""


def setup(install_system: bool = True, log=print) -> Emulator:
    """Install what :func:`find` needs (system packages, aarch64 runtime, runner); idempotent."""
    missing = [t for t in (QEMU, CROSS_CXX) if shutil.which(t) is None]
    if missing or not (SYSROOT / "lib").is_dir():
        _install_system_packages(install_system, log)
    runtime = cache_dir()
    if not (runtime / "lib" / "libtvm_runtime.so").exists():
        _fetch_runtime(runtime, log)
    if not (runtime / "runner").exists():
        _build_runner(runtime, log)
    emulator, why = find()
    if emulator is None:
        raise UsageError(f"emulation setup did not complete: {why}")
    return emulator


def _install_system_packages(allowed: bool, log) -> None:
    apt_install(SYSTEM_PACKAGES, "running ARM builds here", allowed, log)


def _fetch_runtime(runtime: Path, log) -> None:
    """Unpack the aarch64 runtime libraries and C++ headers from the two wheels."""
    pins = [
        f"apache-tvm=={_version('apache-tvm')}",
        f"apache-tvm-ffi=={_version('apache-tvm-ffi')}",
    ]
    log(f"downloading the aarch64 wheels of {', '.join(pins)}")
    runtime.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=runtime.parent, prefix=".fetch-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        for platform in WHEEL_PLATFORMS:
            command += ["--platform", platform]
        command += ["--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]
        command += ["-d", tmp, *pins]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UsageError(f"pip download of {pins} failed: {_last_line(done.stderr)}")
        staged = Path(tmp) / "runtime"
        (staged / "lib").mkdir(parents=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
                        (staged / "lib" / Path(name).name).write_bytes(archive.read(name))
                    elif name.startswith(("tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/")):
                        relative = name.split("include/", 1)[1]
                        if relative and not name.endswith("/"):
                            target = staged / "include" / relative
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(archive.read(name))
        for lib in ("libtvm_runtime.so", "libtvm_ffi.so"):
            if not (staged / "lib" / lib).exists():
                raise UsageError(f"the aarch64 wheels hold no {lib}; report the TVM version")
        if runtime.exists():
            shutil.rmtree(runtime)
        os.replace(staged, runtime)


def _build_runner(runtime: Path, log) -> None:
    compiler = shutil.which(CROSS_CXX)
    if compiler is None:
        raise UsageError(f"{CROSS_CXX} is needed to build the emulated runner; run setup")
    log(f"building the aarch64 runner with {CROSS_CXX}")
    staged = runtime / "runner.tmp"
    command = [
        compiler, "-std=c++17", "-O1", f"-I{runtime / 'include'}", str(RUNNER_SOURCE),
        "-o", str(staged), f"-L{runtime / 'lib'}", "-Wl,--no-as-needed",
        "-ltvm_ffi", "-ltvm_runtime", f"-Wl,-rpath-link,{runtime / 'lib'}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(f"building the aarch64 runner failed: {_last_line(done.stderr)}")
    os.replace(staged, runtime / "runner")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise UsageError(f"{distribution} is not installed: pip install 'lightir[tvm]'") from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def main(argv: list[str] | None = None) -> int:
    """``python -m lightir.lowering.emulation setup|status``."""
    parser = argparse.ArgumentParser(prog="python -m lightir.lowering.emulation")
    parser.add_argument("command", choices=["setup", "status"])
    parser.add_argument(
        "--no-system", action="store_true", help="never call apt-get; fail if packages are missing"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            emulator = setup(install_system=not args.no_system)
        else:
            emulator, why = find()
            if emulator is None:
                print(f"ARM emulation: not available: {why}")
                return 1
    except LightirError as exc:
        print(f"lightir emulation: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"ARM emulation: ready: {emulator.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
