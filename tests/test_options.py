"""The command-line helpers predict and serve share."""

from pathlib import Path

import yaml

from cali_reg import options
from tests.helpers import ROOT


def test_the_artifact_names_are_dvc_yamls():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    from_yaml = {Path(a["path"]).name: name for name, a in artifacts.items()}
    assert from_yaml == options.ARTIFACTS
    assert options.model_name(Path("/x/models/quant.json")) == "quant-model"
    assert options.model_name(Path("my-model.json")) == "my-model"


def test_the_shorthands_are_the_artifacts_paths():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    assert sorted(options.SHORTHANDS.values()) == sorted(a["path"] for a in artifacts.values())
