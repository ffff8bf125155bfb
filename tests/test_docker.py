"""The Docker images (docker/): the CPU image built and run for real.

No container registry is reached from the project's machines, so the test makes what the
Dockerfile's build arguments take in their place: a base image debootstrapped from Debian bookworm
with Debian's python3 (cached by tag: later runs reuse it), and an index of PyTorch's CPU wheel
(the one installed here, with its dependencies), served on loopback. The rest comes from PyPI
through `docker build --network host`. When no Docker engine answers, the test starts Debian's
dockerd (`make docker-test-deps` installs it) for its own run and stops it afterwards.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import FIXTURES
from maskml.cli import build_parser, main
from maskml.zoo import get_entry

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
IMAGE_TAG = "maskml-test:cpu"
TEST_LABEL = "maskml-test=1"
SHARED_MARK = "# From here on Dockerfile and Dockerfile.cuda are the same"
# Debian's trust store of this machine goes into the base image: where the way out to PyPI is
# through a TLS proxy, its certificate authority is in there
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# a fixed port when free, so that the build argument naming it stays the same and docker's layer
# cache keeps the torch layer between runs
TORCH_INDEX_PORT = 47231
BUILD_TIMEOUT_S = 1800
SERVE_START_TIMEOUT_S = 180


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:2])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    """The machine's Docker engine, or Debian's dockerd started for this module."""
    if engine_answers():
        yield
        return
    if shutil.which("dockerd") is None:
        pytest.fail("no Docker engine answers and there is no dockerd to start: `make docker-test-deps` "
                    "installs Debian's docker.io")
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    # every container of the test uses the host's network: no bridge, no NAT rules to set up
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@pytest.fixture(scope="module")
def base_image(docker_engine, tmp_path_factory) -> str:
    """A slim Debian bookworm with python3 and venv, as python:3.11-slim would be, tagged by what it
    holds so that a second run finds it."""
    packages = "python3,python3-venv,ca-certificates"
    trust = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
    tag = "maskml-test-base:bookworm-" + hashlib.sha256(packages.encode() + trust).hexdigest()[:12]
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    if shutil.which("debootstrap") is None:
        pytest.fail("the test's base image is built with debootstrap: `make docker-test-deps` installs it")
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"debootstrap failed:\n{(done.stdout + done.stderr)[-3000:]}"
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / cache).glob("*"):
            if path.is_file():
                path.unlink()
    changes = ['CMD ["python3"]']
    if trust:
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(trust)
        changes.append("ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")  # pip trusts only its own list else
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", *[a for c in changes for a in ("--change", c)], "-", tag],
                              stdin=tar.stdout, capture_output=True, text=True, timeout=600)
    tar.stdout.close()
    assert tar.wait() == 0 and imported.returncode == 0, f"docker import failed: {imported.stderr[-2000:]}"
    shutil.rmtree(rootfs)  # 300 MB, in the image now
    return tag


def canonical_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory) -> str:
    """A PEP 503 index of the torch installed here and its dependencies, served on loopback."""
    root = tmp_path_factory.mktemp("torch_index")
    wheels = root / "wheels"
    # for the Python of the base image: Debian bookworm's 3.11
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
                           "--dest", str(wheels), f"torch=={torch.__version__}"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"pip could not download torch=={torch.__version__} (where does pip find "
                                  f"this build? PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL can say):\n{done.stderr[-3000:]}")
    for wheel in wheels.glob("*.whl"):
        (root / "simple" / canonical_name(wheel)).mkdir(parents=True, exist_ok=True)
        os.link(wheel, root / "simple" / canonical_name(wheel) / wheel.name)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def cpu_image(base_image, torch_index, tmp_path_factory) -> str:
    log_path = tmp_path_factory.mktemp("build") / "docker-build.log"
    with open(log_path, "w") as log:
        done = subprocess.run(["docker", "build", "--network", "host", "-f", str(DOCKER / "Dockerfile"),
                               "--build-arg", f"BASE_IMAGE={base_image}",
                               "--build-arg", f"TORCH_INDEX_URL={torch_index}",
                               "--build-arg", f"TORCH_VERSION={torch.__version__}",
                               "--label", TEST_LABEL, "-t", IMAGE_TAG, str(ROOT)],
                              stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, f"docker build failed:\n{log_path.read_text()[-5000:]}"
    # the images of earlier runs, untagged by this one (their layers in common with it stay cached)
    docker("image", "prune", "--force", "--filter", f"label={TEST_LABEL}")
    return IMAGE_TAG


@pytest.fixture(scope="module")
def checkpoint_cache(tmp_path_factory, sam_checkpoints, cutie_small_checkpoint) -> Path:
    """A host folder as ~/.cache/maskml would be after the downloads, to mount at /cache. The files
    are copied, not linked: a link out of a mounted folder leads nowhere inside the container."""
    cache = tmp_path_factory.mktemp("maskml_cache")
    cache.chmod(0o755)  # the image's user is not this one
    for name, path in [("mobile_sam", sam_checkpoints["mobile_sam"]), ("cutie_small", cutie_small_checkpoint)]:
        shutil.copyfile(path, cache / get_entry(name).filename)
    return cache


def work_folder(path: Path) -> Path:
    """A folder to mount at /data that the image's user (not this one) may write into."""
    path.mkdir()
    path.chmod(0o777)
    return path


def test_cpu_and_cuda_dockerfiles_differ_only_before_the_shared_steps():
    cpu, cuda = ((DOCKER / name).read_text() for name in ("Dockerfile", "Dockerfile.cuda"))
    assert SHARED_MARK in cpu and SHARED_MARK in cuda
    assert cpu[cpu.index(SHARED_MARK):] == cuda[cuda.index(SHARED_MARK):], \
        "the CPU image's test stands for the CUDA image too only while their steps after the base are the same"
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-runtime-", cuda, flags=re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+/whl/cu\d+$", cuda, flags=re.M)


def test_compose_serves_on_a_gpu_with_the_cache_volume():
    service, = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"].values()
    assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile.cuda"
    args = build_parser().parse_args(service["command"])
    assert service["command"][0] == "serve" and (args.host, args.port, args.device) == ("0.0.0.0", 8000, "cuda")
    assert any(volume.endswith(":/cache") for volume in service["volumes"])
    device, = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_docker_run_lines_of_the_docs_give_maskml_commands_that_parse(capsys):
    text = (ROOT / "docs" / "docker.md").read_text().replace("\\\n", " ")
    runs = [shlex.split(line) for line in re.findall(r"^docker run .+$", text, flags=re.M)]
    assert len(runs) >= 4
    for words in runs:
        image = next(i for i, word in enumerate(words) if word.startswith("maskml:"))
        try:
            build_parser().parse_args(words[image + 1:])
        except SystemExit:
            pytest.fail(f"docs/docker.md: `maskml {shlex.join(words[image + 1:])}` does not parse: "
                        f"{capsys.readouterr().err.strip()}")


def test_image_runs_maskml_as_a_user_with_the_cache_as_a_volume(cpu_image):
    inspected = docker("image", "inspect", cpu_image, "--format",
                       "{{json .Config.Entrypoint}} {{.Config.User}} {{json .Config.Volumes}}").stdout.split()
    assert inspected == ['["maskml"]', "maskml", '{"/cache":{}}']
    done = docker("run", "--rm", "--network", "host", "--entrypoint", "sh", cpu_image, "-c",
                  'id -u; echo "$MASKML_HOME"; python -c "import torch; print(torch.__version__)"')
    uid, home, torch_version = done.stdout.split()
    assert uid != "0" and home == "/cache" and torch_version == torch.__version__


def test_segment_in_the_container_with_a_checkpoint_from_the_host(cpu_image, checkpoint_cache, tmp_path):
    work = work_folder(tmp_path / "work")
    shutil.copyfile(FIXTURES / "sam" / "truck_1200x800.png", work / "truck.png")
    prompt = ["--model", "mobile_sam", "--point", "430,310", "--point", "210,620,0"]
    done = docker("run", "--rm", "--network", "host", "-v", f"{checkpoint_cache}:/cache", "-v", f"{work}:/data",
                  cpu_image, "segment", "truck.png", *prompt, "--out", "masks/truck.png", timeout=300)
    assert done.stderr == "loading mobile_sam from /cache/mobile_sam.pt ...\n"  # found in the mounted cache

    expected = tmp_path / "expected.png"
    assert main(["segment", str(work / "truck.png"), *prompt, "--out", str(expected),
                 "--checkpoint", str(checkpoint_cache / "mobile_sam.pt")]) == 0
    in_container = np.array(Image.open(work / "masks" / "truck.png"))
    assert in_container.shape == (800, 1200) and 0 < in_container.mean() < 255
    np.testing.assert_array_equal(in_container, np.array(Image.open(expected)))

    bad = docker("run", "--rm", "--network", "host", "-v", f"{checkpoint_cache}:/cache", "-v", f"{work}:/data",
                 cpu_image, "segment", "truck.png", "--model", "mobile_sam", "--point", "1300,10",
                 "--out", "outside.png", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "outside the 1200x800 image" in bad.stderr
    assert not (work / "outside.png").exists()


def test_a_checkpoint_the_image_user_may_not_read_is_one_line(cpu_image, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    (cache / "mobile_sam.pt").write_bytes(b"PK\x03\x04")
    (cache / "mobile_sam.pt").chmod(0o600)  # this user's (root's, in CI), not the image's user's
    done = docker("run", "--rm", "--network", "host", "-v", f"{cache}:/cache",
                  "-v", f"{FIXTURES / 'sam' / 'truck_1200x800.png'}:/data/truck.png:ro",
                  cpu_image, "segment", "truck.png", "--point", "1,1", "--out", "/tmp/mask.png", check=False)
    assert done.returncode == 2 and done.stderr == (
        "maskml segment: error: checkpoint /cache/mobile_sam.pt is not readable by the user running maskml: "
        "give it read permission (chmod a+r) or run as its owner.\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_in_the_container_answers_with_the_page(cpu_image, checkpoint_cache):
    port, name = free_port(), f"maskml-test-serve-{os.getpid()}"
    # the host's network, so the server stays on loopback (no token, nothing reachable from outside)
    docker("run", "-d", "--name", name, "--network", "host", "-v", f"{checkpoint_cache}:/cache",
           cpu_image, "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", "mobile_sam", "--tracker", "cutie_small")
    try:
        deadline, page = time.monotonic() + SERVE_START_TIMEOUT_S, None
        while page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    page = response.read().decode()
                    assert response.status == 200 and "text/html" in response.headers["Content-Type"]
            except (urllib.error.URLError, ConnectionError):
                running = docker("ps", "-q", "--filter", f"name={name}").stdout.strip()
                if not running or time.monotonic() > deadline:
                    logs = docker("logs", name, check=False)
                    pytest.fail(f"maskml serve did not answer on port {port}:\n{(logs.stdout + logs.stderr)[-3000:]}")
                time.sleep(1)
        assert "<html" in page.lower() and "maskml" in page.lower()
    finally:
        docker("rm", "-f", name, check=False)
