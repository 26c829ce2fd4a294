"""The container image is built from the Dockerfile and runs: ``handoff --help`` and /healthz
in the built image, as the image's own non-root user.

No Docker engine and no image registry is needed. The base (``PYTHON_IMAGE``) is a Debian root
filesystem made by mmdebstrap from Debian's packages (python3 3.11, venv, pip), imported with
buildah; buildah builds the Dockerfile daemonless (storage driver vfs, RUN steps with
``--isolation chroot``) and runs the image the same way, on the host's network.

Opt-in: HANDOFF_IMAGE_TEST=1. It takes 5 to 10 minutes on 2 cores (about 2 for the base and 3
for the build, which installs the project's dependencies from PyPI; more on a busy machine) and
runs as root with buildah and mmdebstrap installed (``apt-get install buildah mmdebstrap``).
Run it on its own: its disk traffic slows database tests running beside it past their time
limits, so ``.ci/run`` leaves it out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cli.test_serve import free_port
from tests.deploy.test_dockerfile import REPO

OPT_IN = "HANDOFF_IMAGE_TEST"
SUITE = "bookworm"  # Debian 12: python3 is 3.11, as the Dockerfile's default base
MIRROR = os.environ.get("HANDOFF_IMAGE_TEST_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_TAG = "localhost/handoff-test-base:latest"
IMAGE_TAG = "localhost/handoff:test"
IMAGE_USER = "10001"  # the Dockerfile's USER (the chart's runAsUser)


def _unavailable() -> str | None:
    if os.environ.get(OPT_IN) != "1":
        return f"set {OPT_IN}=1 to build the image (5 to 10 minutes; needs buildah, mmdebstrap)"
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install buildah mmdebstrap"
    if os.geteuid() != 0:
        return "buildah with the vfs driver and mmdebstrap need root here"
    return None


@dataclass(frozen=True)
class Buildah:
    """buildah with its own storage (removed afterwards), never the machine's default one."""

    root: Path

    def __call__(self, *args: str, timeout: float = 120) -> str:
        command = [
            "buildah",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args[:2])}: {done.stderr[-4000:]}"
        return done.stdout.strip()

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [
                    "buildah",
                    *("--root", str(self.root / "storage"), "--runroot", str(self.root / "run")),
                    *("--storage-driver", "vfs", *args),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def _debian_base(buildah: Buildah, work: Path) -> None:
    """PYTHON_IMAGE from Debian's packages: an mmdebstrap root filesystem as an image."""
    rootfs = work / "base.tar"
    made = subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            SUITE,
            str(rootfs),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert made.returncode == 0, made.stderr[-4000:]
    container = buildah("from", "scratch")
    mounted = Path(buildah("mount", container))
    subprocess.run(["tar", "-C", str(mounted), "-xf", str(rootfs)], check=True)
    # The build's pip reaches PyPI through whatever TLS the host trusts (a proxy's own CA,
    # say): the base trusts the host's CA bundle, as the host's own pip does.
    if HOST_CA_BUNDLE.exists():
        shutil.copyfile(HOST_CA_BUNDLE, mounted / "etc/ssl/certs/ca-certificates.crt")
    buildah("umount", container)
    buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", container)
    buildah("commit", "--rm", container, BASE_TAG)
    rootfs.unlink()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Buildah, str]]:
    """The Dockerfile built on the Debian base, and a working container of it."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get(OPT_IN) == "1" and os.environ.get("CI"):
            pytest.fail(f"{OPT_IN}=1 under CI, but {reason}")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("image")
    buildah = Buildah(work)
    try:
        _debian_base(buildah, work)
        buildah(
            "bud",
            "--isolation",
            "chroot",
            "--build-arg",
            f"PYTHON_IMAGE={BASE_TAG}",
            "--tag",
            IMAGE_TAG,
            str(REPO),
            timeout=1500,
        )
        yield buildah, buildah("from", IMAGE_TAG)
    finally:
        subprocess.run(
            ["buildah", "--root", str(work / "storage"), "--runroot", str(work / "run"),
             "--storage-driver", "vfs", "rm", "--all"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def test_the_image_runs_as_its_non_root_user(image: tuple[Buildah, str]) -> None:
    buildah, container = image
    assert buildah("inspect", "--format", "{{.OCIv1.Config.User}}", IMAGE_TAG).startswith(
        f"{IMAGE_USER}:"
    )
    # No --user: the image's own USER applies.
    run = ("run", "--isolation", "chroot", container, "--")
    assert buildah(*run, "id", "-u") == IMAGE_USER
    assert "serve" in buildah(*run, "handoff", "--help")


def test_the_image_serves_healthz(image: tuple[Buildah, str], tmp_path: Path) -> None:
    buildah, container = image
    port = free_port()
    server = buildah.popen(
        *("run", "--isolation", "chroot", container, "--"),
        *("handoff", "serve", "--host", "127.0.0.1", "--port", str(port)),
        log=tmp_path / "serve.log",
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
                time.sleep(1)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    finally:
        server.terminate()
        server.wait(timeout=30)
