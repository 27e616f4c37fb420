"""The project's container image (``Containerfile``), built and run with
podman for tests, without any registry.

The base is Debian made here: ``debootstrap --variant=minbase
--include=python3,python3-venv SUITE ROOTFS MIRROR`` from the mirror apt
already uses (``/etc/apt/sources.list*``), imported as a local image. The
project's dependencies are wheels built on the host (``pip wheel``; so the
suite is the one whose ``python3`` is the host's Python minor version) and
installed inside with ``pip --no-index --find-links``; the Debian packages of
the Containerfile come from the same mirror (``--network host`` while
building only). Containers run with ``--network none``, never podman's
default bridge network (it would add a bridge and iptables chains to this
machine's own network).

Everything podman keeps lives under :data:`CACHE` (``$TARPROC_IMAGE_CACHE``,
default ``/var/tmp/tarproc-image-cache``): its own ``--root``/``--runroot``
and ``containers.conf``, the base image and the wheels, so a second run
builds nothing. The image is tagged with a hash of what goes into it
(Containerfile, setup.cfg, pyproject.toml, README.md, man/, tarproc/); a change to
the code rebuilds only the last layer (the dependencies' layer is keyed by
setup.cfg and pyproject.toml through podman's layer cache).

The podman settings this machine needs (measured; see issue 17): ulimits
set to the current nofile and an nproc of at most 32768 (root lacks
CAP_SYS_RESOURCE, so the runtime's setrlimit to podman's defaults fails), runtime runc and cgroupfs (crun
refuses hybrid cgroups), the file events logger (no journald).

Use the session fixtures ``tarproc_image`` and ``gm_env`` (the host's
environment with GraphicsMagick, for the same run on the host), registered
in conftest.py::

    def test_x(tarproc_image):
        tarproc_image.run(["tarproc", "--version"])     # podman run --rm --network none IMAGE ...
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TARPROC_IMAGE_CACHE", "/var/tmp/tarproc-image-cache"))
#: the Debian suite whose python3 has the host's minor version (the wheels are built here)
SUITES = {(3, 11): "bookworm", (3, 13): "trixie"}
#: the files that go into the image (the build context, see .containerignore)
CONTEXT = ("Containerfile", "setup.cfg", "pyproject.toml", "README.md")
#: what podman writes outside --root/--runroot (removed afterwards when we created it)
PODMAN_LEFTOVERS = ("/run/libpod", "/run/containers", "/var/lib/containers/cache", "/var/lib/containers")


def mirror() -> str:
    """The Debian mirror apt uses here (the first ``URIs:`` or ``deb``
    line of /etc/apt/sources.list*), else deb.debian.org."""
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"]:
                url = next((w for w in words[1:] if "://" in w), None)
                if url and "security" not in url:
                    return url
    return "http://deb.debian.org/debian"


def context_hash() -> str:
    """A hash of every file the image is built from."""
    h = hashlib.sha256()
    files = [REPO / name for name in CONTEXT]
    files += sorted(p for d in ("man", "tarproc") for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def missing_tools() -> str:
    """Why the image cannot be built here ("" when it can)."""
    if os.geteuid() != 0:
        return "the image tests run podman as root (debootstrap needs root)"
    if any(shutil.which(tool) is None for tool in ("podman", "runc", "debootstrap")):
        done = subprocess.run([str(REPO / ".ci" / "container-tools")], capture_output=True, text=True)
        if done.returncode != 0:
            return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ".ci/container-tools failed"
    if sys.version_info[:2] not in SUITES:
        return f"no Debian suite with Python {sys.version_info[0]}.{sys.version_info[1]} (wheels are built here)"
    return ""


class Podman:
    """podman with its own store under ``cache`` and the settings above."""

    def __init__(self, cache: Path = CACHE):
        self.cache = cache
        self.conf = cache / "containers.conf"
        cache.mkdir(parents=True, exist_ok=True)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        # nproc: at most 32768 (measured: runc's prlimit of its init fails with
        # EPERM from about 65536 up here, below this process's own 96367)
        nproc = tuple(min(v, 32768) if v != resource.RLIM_INFINITY else 32768
                      for v in resource.getrlimit(resource.RLIMIT_NPROC))

        def limit(value: int) -> str:
            return "-1" if value == resource.RLIM_INFINITY else str(value)

        self.conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={limit(nofile[0])}:{limit(nofile[1])}",'
            f' "nproc={limit(nproc[0])}:{limit(nproc[1])}"]\n'
            'netns = "none"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{cache}/events.log"\n'
            f'tmp_dir = "{cache}/libpod-tmp"\n'
        )
        self.env = dict(os.environ, CONTAINERS_CONF=str(self.conf))
        self.base_argv = ["podman", "--root", str(cache / "storage"), "--runroot", str(cache / "run"),
                          "--storage-driver", "overlay"]

    def argv(self, *args: str) -> list[str]:
        return [*self.base_argv, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        done = subprocess.run(self.argv(*args), env=self.env, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            err = done.stderr.decode(errors="replace") if isinstance(done.stderr, bytes) else done.stderr
            raise RuntimeError(f"podman {' '.join(args[:3])}... exit {done.returncode}: {(err or '')[-2000:]}")
        return done

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0


class Image:
    """The built image: its name, how long each step took (``timings``,
    seconds, 0 for a cached step) and its size in bytes."""

    def __init__(self, podman: Podman, name: str, timings: dict[str, float]):
        self.podman = podman
        self.name = name
        self.timings = timings
        self.size = int(podman("image", "inspect", "--format", "{{.Size}}", name, text=True).stdout.strip())

    def run_argv(self, argv: list[str], *options: str, log_driver: str = "passthrough") -> list[str]:
        """``podman run --rm -i --log-driver LOG_DRIVER --network none
        [options] IMAGE argv...``: the README's recipe (passthrough hands the
        container our own stdin and stdout, where the default ``k8s-file``
        copies every byte of a tar stream into a log file as well)."""
        return self.podman.argv("run", "--rm", "-i", "--log-driver", log_driver, "--network", "none", *options,
                                self.name, *argv)

    def run(self, argv: list[str], *options: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.run_argv(argv, *options), env=self.podman.env, **kwargs)


def _locked(path: Path):
    lock = open(path, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def build_base(podman: Podman, suite: str, log) -> str:
    """``localhost/tarproc-test-base:SUITE``, debootstrapped and imported
    unless it exists."""
    name = f"localhost/tarproc-test-base:{suite}"
    if podman.exists(name):
        return name
    rootfs = podman.cache / f"rootfs-{suite}"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", suite, str(rootfs),
                    mirror()], check=True, stdout=log, stderr=log, timeout=900)
    # apt inside reads the mirror's list: debootstrap writes sources.list with it already
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
    podman("import", "--change", "CMD=/bin/bash", "-", name, stdin=tar.stdout)
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar of the debootstrap root failed")
    shutil.rmtree(rootfs)
    return name


def build_wheels(podman: Podman, log) -> Path:
    """The project's dependencies (and setuptools, wheel for its build) as
    wheels, built with the host's pip; kept per hash of setup.cfg and
    pyproject.toml."""
    h = hashlib.sha256((REPO / "setup.cfg").read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wheels = podman.cache / f"wheels-{h}"
    if (wheels / ".done").exists():
        return wheels
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "-w", str(wheels), f"{REPO}[cloud]"], check=True, stdout=log, stderr=log,
                   timeout=900)
    subprocess.run([*pip, "download", "-q", "-d", str(wheels), "--only-binary=:all:", "setuptools>=61", "wheel"],
                   check=True, stdout=log, stderr=log, timeout=900)
    for built in wheels.glob("tarproc-*.whl"):
        built.unlink()  # the image builds the project from its source
    (wheels / ".done").touch()
    return wheels


def build_image(podman: Podman, log) -> Image:
    """Build (or find) the image from the Containerfile on the local base."""
    timings: dict[str, float] = {}
    suite = SUITES[sys.version_info[:2]]
    with _locked(podman.cache / "build.lock"):
        name = f"localhost/tarproc-test:{context_hash()}"
        if podman.exists(name):
            return Image(podman, name, {"cached": 0.0})
        t = time.monotonic()
        base = build_base(podman, suite, log)
        timings["base"] = time.monotonic() - t
        t = time.monotonic()
        wheels = build_wheels(podman, log)
        timings["wheels"] = time.monotonic() - t
        t = time.monotonic()
        # --network host: apt-get inside reaches the mirror; never the default bridge
        podman("build", "--pull=never", "--layers", "--network", "host", "--build-arg", f"BASE={base}",
               "--build-arg", "PIP_INSTALL_OPTS=--no-index --find-links /wheels", "--volume", f"{wheels}:/wheels:ro",
               "-f", str(REPO / "Containerfile"), "-t", name, str(REPO), stdout=log, stderr=log, capture_output=False)
        timings["build"] = time.monotonic() - t
        # older test images go: each is a few MB of layers on the cached base
        for old in podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/tarproc-test", text=True).stdout.split():
            if old != name:
                podman("rmi", old, check=False)
        return Image(podman, name, timings)


def clean_leftovers(before: set[str]) -> None:
    """Remove what podman wrote outside its --root/--runroot (the paths of
    :data:`PODMAN_LEFTOVERS` that did not exist before)."""
    for path in PODMAN_LEFTOVERS:
        if path not in before and os.path.exists(path):
            if path == "/var/lib/containers":  # only when podman left nothing else there
                if not os.listdir(path):
                    os.rmdir(path)
            else:
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tarproc_image(tmp_path_factory) -> Image:
    """The project's image built on a local debootstrap base (cached under
    :data:`CACHE`); skips, saying why, when podman or debootstrap cannot be
    had."""
    why = missing_tools()
    if why:
        pytest.skip(why)
    before = {p for p in PODMAN_LEFTOVERS if os.path.exists(p)}
    podman = Podman()
    log_path = tmp_path_factory.mktemp("image") / "build.log"
    try:
        with open(log_path, "wb") as log:
            image = build_image(podman, log)
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        pytest.fail(f"building the image failed: {exc} (log: {log_path})")
    sys.stderr.write(f"\ntarproc image {image.name}: {image.size / 1e6:.0f} MB, timings {image.timings}\n")
    try:
        yield image
    finally:
        clean_leftovers(before)


@pytest.fixture(scope="session")
def gm_env() -> dict:
    """The host's environment (the venv's tools first) with GraphicsMagick's
    ``gm``, installed by ``.ci/container-tools`` when missing: the host side
    of the image's runs. Skips, saying why, when gm cannot be had."""
    from conftest import tool_env

    if shutil.which("gm") is None:
        subprocess.run([str(REPO / ".ci" / "container-tools")], capture_output=True, timeout=900)
    if shutil.which("gm") is None:
        pytest.skip("GraphicsMagick is not installed on the host (apt-get install graphicsmagick): no reference bytes")
    return tool_env()
