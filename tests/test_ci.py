"""The linters are the same everywhere: requirements-dev.txt, pre-commit and .ci/run."""

import re

import yaml

from tests.helpers import ROOT


def dev_pins() -> dict[str, str]:
    text = (ROOT / "requirements-dev.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M))


def test_pre_commit_hooks_pin_the_versions_of_requirements_dev():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    pins = dev_pins()
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {h["id"] for h in hooks} >= {
        "ruff",
        "ruff-format",
        "hadolint",
        "actionlint",
        "shellcheck",
    }
    for hook in hooks:
        assert hook["additional_dependencies"], hook["id"]
        for dep in hook["additional_dependencies"]:
            name, version = dep.split("==")
            assert pins.get(name) == version, dep


def test_ci_runs_ruff_lint_and_format_check():
    script = (ROOT / ".ci" / "run").read_text()
    assert "ruff check" in script and "ruff format --check" in script
    rules = re.search(r"select = \[(.*?)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    # pyflakes, pycodestyle, isort, bugbear, pyupgrade
    for family in ("F", "E", "W", "I", "B", "UP"):
        assert f'"{family}"' in rules


def test_actionlint_checks_every_workflow_in_ci_and_in_the_lint_job():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert {p.name for p in workflows} >= {"ci.yaml", "report.yaml"}
    assert all(p.suffix == ".yaml" for p in workflows)  # the glob below sees them all
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"actionlint .*\.github/workflows/\*\.yaml$", script, flags=re.M)
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yaml").read_text())
    runs = [step.get("run", "") for step in ci["jobs"]["lint"]["steps"]]
    assert any(re.search(r"actionlint .*\.github/workflows/\*\.yaml$", r) for r in runs)


def test_the_report_workflow_comments_once_with_job_permissions_only():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "report.yaml").read_text())
    assert wf["permissions"] == {}
    [job] = wf["jobs"].values()
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "gh pr comment" in script and "--edit-last --create-if-none" in script
    assert "GITHUB_STEP_SUMMARY" in script  # the fork fallback
    assert "curl" not in script and "gh api" not in script


def test_ci_runs_the_readme_test_command_last_and_stops_on_failure():
    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"^(\.venv/bin/python -m pytest\S*(?: \S+)*?)\s+# the test suite", readme, re.M
    )
    assert command, "the README's quick start names the test command"
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line and not line.startswith(("#", "echo"))]
    assert commands[-1] == command.group(1)
    assert "set -euo pipefail" in commands
