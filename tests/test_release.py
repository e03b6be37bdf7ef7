"""Releases from the model registry: GTO's tags, the image of a tagged version, the workflow.

Publishing (ghcr.io, GitHub releases) cannot run here; everything before it does: the tags
on a scratch repo, `gto show`, the files a version tag names pulled from a DVC remote into
a checkout of the tag, and the image built from them, answering with that model's hash.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, copy_built, copy_project, dvc, once_per_run, project_env, sh
from tests.helpers.podman import CONTAINER_CHECK, podman, turn

CA = Path(os.environ.get("CONTAINER_CHECK_CA", "/etc/ssl/certs/ca-certificates.crt"))
WORKFLOW = yaml.safe_load((ROOT / ".github/workflows/release.yaml").read_text())
VERSION_TAG = "quant-model@v1.0.0"


def gto(*args, cwd, check=True):
    return sh(["gto", *args], cwd, check=check)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- GTO --------------------------------------------------------------------------------


@pytest.mark.slow  # a dozen gto commands, a second or more each
def test_gto_registers_versions_and_assigns_stages_as_the_docs_say(tmp_path):
    repo = copy_project(tmp_path)
    gto("register", "quant-model", "--version", "v1.0.0", "-m", "first", cwd=repo)
    gto("assign", "quant-model", "--version", "v1.0.0", "--stage", "prod", cwd=repo)
    tags = set(sh(["git", "tag"], repo).stdout.split())
    assert tags == {VERSION_TAG, "quant-model#prod#1"}
    # annotated tags, which dvc artifacts get and GTO's own readers need
    kinds = sh(["git", "for-each-ref", "--format=%(objecttype)", "refs/tags"], repo).stdout
    assert set(kinds.split()) == {"tag"}
    shown = json.loads(gto("show", "--json", cwd=repo).stdout)
    assert shown["quant-model"]["version"] == "v1.0.0"
    assert shown["quant-model"]["stage"] == {"prod": "v1.0.0"}
    table = gto("show", cwd=repo).stdout
    assert "quant-model" in table and "v1.0.0" in table and "#prod" in table

    # a second version, promoted: the stage moves, and its tag names the new version
    (repo / "README.md").write_text("changed\n")
    sh(["git", "commit", "-qam", "next"], repo)
    gto("register", "quant-model", "--bump-minor", cwd=repo)
    gto("assign", "quant-model", "--version", "v1.1.0", "--stage", "prod", cwd=repo)
    shown = json.loads(gto("show", "--json", cwd=repo).stdout)
    assert shown["quant-model"]["version"] == "v1.1.0"
    assert shown["quant-model"]["stage"] == {"prod": "v1.1.0"}
    # what the release workflow's resolve job reads from each kind of tag
    ref = json.loads(gto("check-ref", "quant-model#prod#2", "--json", cwd=repo).stdout)
    assert (ref["event"], ref["version"], ref["stage"]) == ("assignment", "v1.1.0", "prod")
    ref = json.loads(gto("check-ref", "quant-model@v1.1.0", "--json", cwd=repo).stdout)
    assert (ref["event"], ref["version"]) == ("registration", "v1.1.0")


def resolve_step(repo: Path, tag: str, tmp_path: Path) -> tuple[int, dict, str]:
    """The release workflow's `gto check-ref` step, run as GitHub would: exit code, outputs."""
    step = next(s for s in WORKFLOW["jobs"]["resolve"]["steps"] if s.get("id") == "ref")
    outputs = tmp_path / f"output-{uuid.uuid4().hex}"
    env = project_env() | {
        "TAG": tag,
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_REPOSITORY": "Some-Org/Cali-Reg",
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True
    )
    lines = outputs.read_text().splitlines() if outputs.exists() else []
    return proc.returncode, dict(line.split("=", 1) for line in lines), proc.stdout + proc.stderr


@pytest.mark.slow  # a dozen gto commands, a second or more each
def test_the_workflows_resolve_step_reads_each_kind_of_tag(tmp_path):
    repo = copy_project(tmp_path / "repo")
    gto("register", "quant-model", "--version", "v1.0.0", cwd=repo)
    gto("assign", "quant-model", "--version", "v1.0.0", "--stage", "prod", cwd=repo)
    gto("deprecate", "quant-model", "v1.0.0", "prod", cwd=repo)  # quant-model#prod!#2
    sh(["git", "tag", "quant-model@v2.0.0"], repo)  # a plain tag, not GTO's
    code, out, _ = resolve_step(repo, VERSION_TAG, tmp_path)
    assert code == 0 and out == {
        "event": "registration",
        "version": "v1.0.0",
        "stage": "",
        "image": "ghcr.io/some-org/cali-reg",  # image names are lower case
    }
    code, out, _ = resolve_step(repo, "quant-model#prod#1", tmp_path)
    assert code == 0 and (out["event"], out["version"], out["stage"]) == (
        "assignment",
        "v1.0.0",
        "prod",
    )
    code, out, log = resolve_step(repo, "quant-model#prod!#2", tmp_path)
    assert code == 0 and out["event"] == "unassignment" and "nothing to publish" in log
    code, out, log = resolve_step(repo, "quant-model@v2.0.0", tmp_path)
    assert code != 0 and out == {} and "is not a GTO tag of quant-model" in log


def test_gto_is_pinned_at_the_version_dvc_installs():
    pins = (ROOT / "requirements-dev.txt").read_text()
    from importlib.metadata import version

    assert f"gto=={version('gto')}" in pins


# --- a tagged version's files, and its image ----------------------------------------------


def release(built_repo: Path, base: Path) -> None:
    """In ``base``: ``repo``, with v1.0.0 registered, in stage prod and pushed to
    ``remote``, then a 3-bit model on top; ``v1.json``, the v1.0.0 model file."""
    repo, remote = base / "repo", base / "remote"
    copy_built(built_repo, repo)
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=repo)
    dvc("push", cwd=repo)
    v1 = (repo / "models/quant.json").read_bytes()
    gto("register", "quant-model", "--version", "v1.0.0", cwd=repo)
    gto("assign", "quant-model", "--version", "v1.0.0", "--stage", "prod", cwd=repo)
    # HEAD moves on: another model, so a build from the workspace would be caught
    dvc("exp", "run", "-S", "quantize.margin=0.01", cwd=repo)
    sh(["git", "commit", "-qam", "3 bits"], repo)
    dvc("push", cwd=repo)
    assert (repo / "models/quant.json").read_bytes() != v1
    (base / "v1.json").write_bytes(v1)


@pytest.fixture(scope="module")
def released(built_repo, run_dir):
    """(repo, remote, the v1.0.0 model file's bytes), made by ``release`` once per test
    run: the tests only read them (clone, fetch, get and pull from them)."""
    base = once_per_run(run_dir / "released", lambda base: release(built_repo, base))
    return base / "repo", base / "remote", (base / "v1.json").read_bytes()


@pytest.mark.slow  # the fixture pushes, tags, runs an experiment: about 30 s
def test_a_consumer_gets_the_version_or_the_stage_and_its_card_without_a_clone(released, tmp_path):
    repo, remote, v1 = released
    remote_config = ["--remote-config", f"url={remote}"]
    for selector in (["--rev", "v1.0.0"], ["--stage", "prod"]):
        out = tmp_path / "-".join(selector).strip("-")
        out.mkdir()
        dvc("artifacts", "get", str(repo), "quant-model", *selector, *remote_config, cwd=out)
        assert [p.name for p in out.iterdir()] == ["quant.json"]
        assert (out / "quant.json").read_bytes() == v1  # not HEAD's 3-bit model
    for rev in (VERSION_TAG, "quant-model#prod#1"):
        out = tmp_path / rev.replace("#", "-")
        out.mkdir()
        dvc("get", str(repo), "models/card.md", "--rev", rev, *remote_config, cwd=out)
        assert hashlib.sha256(v1).hexdigest() in (out / "card.md").read_text()


def checkout_of_tag(released, dest: Path) -> Path:
    """What the workflow starts from: a fresh clone at the tag, with the test's remote."""
    repo, remote, _ = released
    sh(["git", "clone", "-q", "--branch", VERSION_TAG, str(repo), str(dest)], repo)
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=dest)
    return dest


def release_image(cwd, *args, build: str, check=True):
    # Docker's image format, which the workflow's docker build makes (podman's default,
    # OCI, drops the HEALTHCHECK); its layers are also test_container.py's image's.
    env = project_env() | {"CONTAINER_BUILD": build, "BUILDAH_FORMAT": "docker"}
    proc = subprocess.run(
        ["bash", ".ci/release-image", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1800,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"release-image exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow  # the fixture pushes, tags, runs an experiment: about 30 s
def test_release_image_pulls_the_tagged_versions_files_and_labels_the_build(released, tmp_path):
    _, _, v1 = released
    ctx = checkout_of_tag(released, tmp_path / "ctx")
    assert not (ctx / "models/quant.json").exists()  # only DVC has it
    out = release_image(ctx, VERSION_TAG, "img:v1.0.0", build="echo BUILD").stdout
    assert (ctx / "models/quant.json").read_bytes() == v1
    for name in ("models/float.json", "data/sample.csv", "models/card.md", "models/schema.json"):
        assert (ctx / name).is_file(), name
    want = hashlib.sha256(v1).hexdigest()
    assert out.splitlines()[-1] == f"model_sha256={want}"
    build = next(line for line in out.splitlines() if line.startswith("BUILD"))
    assert f"--label io.github.cali-reg.model.sha256={want}" in build
    assert "--label org.opencontainers.image.version=v1.0.0" in build
    assert build.endswith("--tag img:v1.0.0 .")


@pytest.mark.slow  # the fixture pushes, tags, runs an experiment: about 30 s
def test_release_image_refuses_what_is_not_a_checked_out_version_tag(released, tmp_path):
    ctx = checkout_of_tag(released, tmp_path / "ctx")
    for args, message in [
        (("quant-model#prod#1", "img"), "is not a version tag of quant-model"),
        (("quant-model@v9.9.9", "img"), "no git tag quant-model@v9.9.9"),
        (("v1.0.0",), "usage: .ci/release-image TAG IMAGE"),
    ]:
        proc = release_image(ctx, *args, build="echo BUILD", check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr and "BUILD" not in proc.stdout
    repo, _, _ = released
    sh(["git", "fetch", "-q", str(repo), "HEAD"], ctx)
    sh(["git", "checkout", "-q", "FETCH_HEAD"], ctx)  # the 3-bit commit, not the tag
    proc = release_image(ctx, VERSION_TAG, "img", build="echo BUILD", check=False)
    assert proc.returncode == 2 and f"HEAD is not {VERSION_TAG}" in proc.stderr


def podman_usable() -> str | None:
    """Why the image test cannot run here, or None if it can."""
    if not CONTAINER_CHECK.is_file():
        return f"{CONTAINER_CHECK} is not on this machine"
    if shutil.which("podman") is None:
        return "podman is not installed (../shared/tools/container-check installs it as root)"
    return None


VERSION_OF_SERVER = """
import json, time, urllib.request
for _ in range(60):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:8080/version", timeout=2).read().decode())
        break
    except OSError:
        time.sleep(0.5)
"""


@pytest.mark.slow
@pytest.mark.skipif(podman_usable() is not None, reason=str(podman_usable()))
def test_the_image_of_a_tagged_version_answers_with_that_models_hash(released, tmp_path):
    _, _, v1 = released
    ctx = checkout_of_tag(released, tmp_path / "ctx")
    image = f"localhost/cali-reg-release-test:{uuid.uuid4().hex[:8]}"
    build = (
        f"{CONTAINER_CHECK} podman build --pull=never -v {CA}:/run/host-ca/ca-certificates.crt:ro"
    )
    name = f"release-test-{uuid.uuid4().hex[:8]}"
    try:
        start = time.monotonic()
        with turn():  # its build calls container-check
            out = release_image(ctx, VERSION_TAG, image, build=build).stdout
        print(f"image built in {time.monotonic() - start:.0f} s")
        want = hashlib.sha256(v1).hexdigest()
        assert out.splitlines()[-1] == f"model_sha256={want}"
        labels = json.loads(
            podman("image", "inspect", image, "--format", "{{json .Labels}}").stdout
        )
        assert labels["io.github.cali-reg.model.sha256"] == want
        assert labels["org.opencontainers.image.version"] == "v1.0.0"
        podman("run", "-d", "--name", name, "--network", "none", image, "serve")
        answer = podman("exec", name, "python", "-c", VERSION_OF_SERVER).stdout
        info = json.loads(answer)
        assert info["model_sha256"] == want
        # and not the model of the commit after the tag
        repo, _, _ = released
        assert info["model_sha256"] != sha256(repo / "models/quant.json")
    finally:
        podman("rm", "-f", name, check=False)
        podman("rmi", "-f", image, check=False)


# --- the workflow (it cannot run here) ------------------------------------------------------


def steps_text(job: str) -> str:
    return "\n".join(
        json.dumps(step) for step in WORKFLOW["jobs"][job]["steps"]
    )  # every run:, uses: and env: of the job


def test_the_release_workflow_runs_on_version_and_stage_tags_only():
    on = WORKFLOW[True] if True in WORKFLOW else WORKFLOW["on"]  # YAML 1.1 reads `on` as True
    assert on == {"push": {"tags": ["quant-model@v*", "quant-model#*"]}}


def test_each_job_has_its_own_minimal_permissions():
    assert WORKFLOW["permissions"] == {}
    perms = {name: job["permissions"] for name, job in WORKFLOW["jobs"].items()}
    assert perms == {
        "resolve": {"contents": "read"},
        "image": {"contents": "read", "packages": "write"},
        "release": {"contents": "write"},
        "promote": {"packages": "write"},
    }


def test_a_version_tag_builds_from_its_files_and_a_stage_tag_only_retags():
    jobs = WORKFLOW["jobs"]
    assert "gto check-ref" in steps_text("resolve")
    assert jobs["image"]["if"] == "needs.resolve.outputs.event == 'registration'"
    assert jobs["promote"]["if"] == "needs.resolve.outputs.event == 'assignment'"
    image = steps_text("image")
    assert ".ci/release-image" in image and "docker push" in image and "/version" in image
    release = steps_text("release")
    assert "gh release create" in release
    assert all(f in release for f in ("quant.json", "card.md", "schema.json"))
    promote = steps_text("promote")
    assert "imagetools create" in promote
    # never a rebuild: no checkout, no build, no release-image
    assert not any(w in promote for w in ("docker build ", "release-image", "actions/checkout"))


def test_ci_lints_every_workflow_and_the_release_script():
    ci = (ROOT / ".ci/run").read_text()
    assert ".github/workflows/*.yaml" in ci and ".ci/release-image" in ci
    lint = json.dumps(yaml.safe_load((ROOT / ".github/workflows/ci.yaml").read_text())["jobs"])
    assert ".github/workflows/*.yaml" in lint and ".ci/release-image" in lint
