"""Build the CPU image the way an air-gapped cluster does, for the image test.

``python -m tests.support.image`` makes the wheelhouse (``make wheelhouse``), a Debian bookworm base
image with Python 3.11 from Debian's packages (``debootstrap``, then ``docker import``: for
machines that cannot pull; everyone else builds on the official image), and then the CPU
target from that wheelhouse with no package index. The test session starts it in the
background at the lowest priority, so the build overlaps the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "judge-test/python:3.11-bookworm"
IMAGE = "judge-service:cpu-test"
# The build's log and its result; the test reads both.
LOG = Path(tempfile.gettempdir()) / "judge-image-build.log"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The background build the test session started, for the image fixture to wait on.
BUILD = pytest.StashKey[subprocess.Popen]()
# The build's containers get the smallest CPU weight: the rest of the suite goes first.
CPU_SHARES = "2"


def unavailable() -> str | None:
    """Why no image can be built here, or None."""
    if shutil.which("docker") is None:
        return "no docker command; `make test` installs Docker's engine as root on Debian"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no Docker engine answers; `make docker-engine` starts one as root on Debian"
    if shutil.which("debootstrap") is None and not has_image(BASE_IMAGE):
        return "no debootstrap to make a base image; `make docker-engine` installs it"
    return None


def has_image(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def step(what: str, command: list[str], **kwargs: object) -> None:
    started = time.monotonic()
    print(f"--- {what}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]
    print(f"--- {what}: {time.monotonic() - started:.0f} s", flush=True)


def base_image() -> None:
    """A minimal bookworm root filesystem with python3 and its venv module, as an image."""
    if has_image(BASE_IMAGE):
        return
    with tempfile.TemporaryDirectory(prefix="judge-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        packages = "--include=python3,python3-venv,passwd"
        step("debootstrap", ["debootstrap", "--variant=minbase", packages, "bookworm", str(rootfs), DEBIAN_MIRROR])
        # Package lists and caches are not needed in the image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        step("docker import", ["docker", "import", "--change", 'CMD ["python3"]', "-", BASE_IMAGE], stdin=tar.stdout)
        if tar.wait() != 0:
            raise RuntimeError("tar of the root filesystem failed")


def build() -> None:
    step("wheelhouse", ["make", "--no-print-directory", "wheelhouse"], cwd=ROOT)
    base_image()
    step(
        "docker build",
        [
            "docker", "build", "--target", "cpu", "--cpu-shares", CPU_SHARES,
            "--build-arg", "WHEELHOUSE=wheelhouse", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
            "-t", IMAGE, ".",
        ],
        cwd=ROOT,
    )  # fmt: skip


def start_in_background() -> subprocess.Popen:
    """The build as a niced child process writing to ``LOG``."""
    log = LOG.open("w")
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    return subprocess.Popen([*nice, sys.executable, "-m", "tests.support.image"], cwd=ROOT, stdout=log, stderr=log)


if __name__ == "__main__":
    build()
