"""The image, built and run: what a Kubernetes cluster would ask of it, asked of the container.

No cluster runs here, so this proves the part that can be proved with podman standing in
for the container engine (../shared/tools/container-check): the image builds with its
HEALTHCHECK kept (``--format docker``), starts with deploy/'s arguments, reports healthy,
answers the probes' paths and /metrics inside the container, and on SIGTERM finishes the
request in flight, then exits 0. Skipped where container-check is absent (GitHub's runners,
whose `image` job builds with Docker instead).
"""

import json
import os
import subprocess
import time

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.podman import CONTAINER_CHECK, container_check, podman, turn

TAG = "localhost/cali-reg:test"  # rebuilt by each run, so its layers are the cache
START_TIMEOUT = 60
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CONTAINER_CHECK.exists(), reason="no ../shared/tools/container-check"),
]

PROBE = """
import sys, urllib.request
for path in sys.argv[1:]:
    with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=5) as resp:
        print(path, resp.status, resp.headers.get_content_type())
"""

# Runs in the container: a request whose body is half sent when SIGTERM arrives.
DRAIN_CLIENT = """
import json, socket, sys
row = {"name": "input-0", "shape": [1, 8], "datatype": "FP64", "data": [8.3252, 41, 6.984127,
       1.02381, 322, 2.555556, 37.88, -122.23]}
body = json.dumps({"inputs": [row]}).encode()
s = socket.create_connection(("127.0.0.1", 8080), timeout=30)
s.sendall(b"POST /v2/models/quant-model/infer HTTP/1.1\\r\\nHost: x\\r\\n"
          b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
          + body[:10])
print("half sent", flush=True)
sys.stdin.readline()  # the test sends SIGTERM to the server, then a line
s.sendall(body[10:])
answer = b""
while not answer.endswith(b"}"):
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
head, _, payload = answer.partition(b"\\r\\n\\r\\n")
print(json.dumps({"status": head.split()[1].decode(), "body": json.loads(payload)}), flush=True)
"""


def deployment_args() -> list[str]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.fixture(scope="module")
def image(built_repo):
    """The image of the built project, in Docker's format (podman's OCI default drops
    HEALTHCHECK); container-check passes its environment on, and podman reads the format
    from BUILDAH_FORMAT."""
    env = dict(os.environ, BUILDAH_FORMAT="docker")
    container_check("build", str(built_repo), TAG, timeout=900, env=env)
    return TAG


@pytest.fixture
def container(image):
    """Start a container of the image; remove every one started, by name."""
    names = []

    def start(*args) -> str:
        name = f"cali-reg-test-{os.getpid()}-{len(names)}"
        names.append(name)
        podman("run", "-d", "--name", name, "--network", "none", image, *args)
        return name

    yield start
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def healthcheck(name: str) -> subprocess.CompletedProcess:
    """`podman healthcheck run` until the server has started (the image's start period)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        proc = podman("healthcheck", "run", name, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc
        time.sleep(0.5)


def test_the_image_keeps_its_healthcheck_and_reports_healthy(image, container):
    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspect["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert "/v2/health/ready" in " ".join(inspect["Healthcheck"]["Test"])
    name = container("serve", "--workers", "1")
    proc = healthcheck(name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = podman("inspect", name, "--format", "{{.State.Health.Status}}").stdout.strip()
    assert state == "healthy"
    # the check is real: a server on another port than the one it asks is unhealthy
    other = container("serve", "--workers", "1", "--port", "9090")
    time.sleep(3)
    proc = podman("healthcheck", "run", other, check=False)
    assert proc.returncode != 0 and "unhealthy" in proc.stdout + proc.stderr


def test_the_probes_paths_answer_inside_the_container(container):
    name = container(*deployment_args())
    assert healthcheck(name).returncode == 0
    paths = ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/quant-model", "/metrics"]
    out = podman("exec", name, "python", "-c", PROBE, *paths).stdout.splitlines()
    assert [line.split()[:2] for line in out] == [[p, "200"] for p in paths]
    assert out[-1].endswith("text/plain")


def test_sigterm_drains_the_request_in_flight_then_exits_0(container):
    name = container(*deployment_args())
    assert healthcheck(name).returncode == 0
    with turn():  # podman exec reads container-check's settings while it runs
        client = subprocess.Popen(
            [str(CONTAINER_CHECK), "podman", "exec", "-i", name, "python", "-c", DRAIN_CLIENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout.readline().strip() == "half sent"
            podman("kill", "--signal", "TERM", name)
            time.sleep(1)
            client.stdin.write("go\n")
            client.stdin.flush()
            answer = json.loads(client.stdout.readline())
        finally:
            client.kill()
            client.wait(30)
    assert answer["status"] == "200", answer
    (output,) = answer["body"]["outputs"]
    assert output["datatype"] == "FP64" and len(output["data"]) == 1
    code = podman("wait", name, timeout=60).stdout.strip()
    assert code == "0"


def test_the_image_has_no_scikit_learn_and_runs_as_its_user(image):
    check = (
        "import importlib.util as u, os; "
        "print(os.getuid(), [m for m in ('sklearn', 'prometheus_client', 'numpy') "
        "if u.find_spec(m)])"
    )
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", check)
    assert out.stdout.strip() == "10001 ['prometheus_client', 'numpy']"
