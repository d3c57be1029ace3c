"""Installing a Debian package a test needs (Orthanc, nginx, Chromium) when it is missing and the tests
run as root, without ever starting the package's own service."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def can_install() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("apt-get"))


def apt_install(*packages: str) -> subprocess.CompletedProcess:
    """apt-get install with service starts refused (Debian's policy-rc.d), so a package's own service
    (Orthanc on port 8042, nginx on port 80, on every interface) is never started by a test. One
    install at a time: the suite's two workers (pytest-xdist) may both need one, and apt holds a lock."""
    with open("/tmp/medsam2-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _apt_install(*packages)


def _apt_install(*packages: str) -> subprocess.CompletedProcess:
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        return subprocess.run(f"apt-get update -qq && apt-get install -y -qq {' '.join(packages)}", shell=True,
                              capture_output=True, text=True, env=APT_ENV, timeout=1200)
    finally:
        if made:
            policy.unlink()
