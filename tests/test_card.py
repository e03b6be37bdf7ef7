"""The model card and input schema: parsed by Hugging Face's own parser, figures from the files."""

import hashlib
import json
import tomllib

import pytest
import yaml

from cali_reg import card
from cali_reg.errors import UserError
from tests.conftest import ROOT, dvc, read_json, sh

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def facts_of(repo, **params):
    """The card's facts read from a built repo, with params sections replaced by ``params``."""
    sections = yaml.safe_load((repo / "params.yaml").read_text())
    sections = {k: sections[k] for k in card.PARAMS_QUOTED} | params
    paths = {k: str(repo / v) for k, v in STAGE_PATHS.items()}
    return card.load_facts(paths, sections)


STAGE_PATHS = {
    "model": "models/quant.json",
    "float": "metrics/float.json",
    "quant": "metrics/quant.json",
    "compare": "metrics/compare.json",
    "robustness": "plots/robustness.csv",
    "predictions": "plots/predictions.csv",
    "train": "data/train.csv",
    "test": "data/test.csv",
    "sample": "data/sample.csv",
}


def test_the_test_reads_the_files_the_stage_reads():
    from stages.card import PATHS

    assert PATHS == STAGE_PATHS


def test_huggingface_hub_parses_the_card_and_its_metadata_matches_the_metrics(built_repo):
    from huggingface_hub import ModelCard

    parsed = ModelCard.load(built_repo / "models/card.md")
    data = parsed.data
    quant = read_json(built_repo / "metrics/quant.json")
    assert data.license == "mit"
    assert data.library_name == "cali-reg"
    assert data.datasets == ["california_housing"]
    assert data.model_name == "quant-model"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"r2", "rmse", "mae"}
    for key, result in results.items():
        assert result.metric_value == quant[key]
        assert result.task_type == "tabular-regression"
        assert result.dataset_type == "california_housing"
    split = yaml.safe_load((built_repo / "params.yaml").read_text())["split"]
    assert results["r2"].dataset_split.startswith("test") and f"seed {split['seed']}" in (
        results["r2"].dataset_split
    )
    # the quantisation and the file, from metrics/quant.json and the model file itself
    model_bytes = (built_repo / "models/quant.json").read_bytes()
    model_doc = json.loads(model_bytes)
    assert data.quantization["bits"] == quant["bits"] == model_doc["bits"]
    assert data.quantization["scheme"] == model_doc["scheme"]
    assert data.quantization["payload_bytes"] == quant["payload_bytes"]
    assert data.model_file["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert data.model_file["bytes"] == quant["file_bytes"] == len(model_bytes)
    assert f"{quant['bits']}-bit" in data.tags and model_doc["scheme"] in data.tags
    # the text quotes the same figures
    assert f"R² {quant['r2']}" in parsed.text
    assert hashlib.sha256(model_bytes).hexdigest() in parsed.text


def test_card_metadata_round_trips_through_huggingface_hub(built_repo):
    """What the Hub's own writer makes of the parsed header is what the card holds."""
    from huggingface_hub import ModelCard

    text = (built_repo / "models/card.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert ModelCard.load(built_repo / "models/card.md").data.to_dict() == header


def test_the_artifact_labels_license_and_name_are_the_projects():
    artifact = DVC_YAML["artifacts"][card.ARTIFACT]
    assert set(artifact["labels"]) <= set(card.TAGS)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"].lower() == card.LICENSE
    assert artifact["path"] == STAGE_PATHS["model"]


def test_card_and_schema_travel_with_the_artifact_and_dvc_lock_tracks_them(built_repo):
    stage = DVC_YAML["stages"]["card"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    assert outs == {"models/card.md", "models/schema.json"}
    assert DVC_YAML["artifacts"][card.ARTIFACT]["meta"] == {
        "card": "models/card.md",
        "schema": "models/schema.json",
    }
    lock = yaml.safe_load((built_repo / "dvc.lock").read_text())["stages"]["card"]
    for out in lock["outs"]:
        content = (built_repo / out["path"]).read_bytes()
        assert out["md5"] == hashlib.md5(content).hexdigest()
    assert set(lock["params"]["params.yaml"]) == {"split", "quantize", "robustness"}


def test_schema_lists_the_model_files_features_in_order_and_its_example_predicts(built_repo):
    schema = read_json(built_repo / "models/schema.json")
    model = read_json(built_repo / "models/quant.json")
    names = [i["name"] for i in schema["inputs"]]
    assert names == model["feature_names"]
    assert [i["position"] for i in schema["inputs"]] == list(range(len(names)))
    assert {(i["type"], i["datatype"], i["required"]) for i in schema["inputs"]} == {
        ("double", "FP64", True)
    }
    assert (
        schema["model_sha256"]
        == hashlib.sha256((built_repo / "models/quant.json").read_bytes()).hexdigest()
    )
    train = sh(["python", "-c", TRAIN_RANGES], built_repo).stdout
    assert json.loads(train) == [[i["training_min"], i["training_max"]] for i in schema["inputs"]]
    # the example is the first sample row, and its answer is what the predictor prints
    example = schema["input_example"]
    assert example["columns"] == names
    rows = "\n".join([",".join(names), ",".join(map(repr, example["data"][0]))]) + "\n"
    out = sh(["cali-reg", "predict", "--model", "models/quant.json"], built_repo, input=rows)
    assert [float(v) for v in out.stdout.split()] == schema["output_example"]
    card_text = (built_repo / "models/card.md").read_text()
    assert json.dumps({"predictions": schema["output_example"]}) in card_text


TRAIN_RANGES = """
import json
from cali_reg.data import read_xy
X, _ = read_xy("data/train.csv")
print(json.dumps([[float(lo), float(hi)] for lo, hi in zip(X.min(0), X.max(0))]))
"""


def test_the_robustness_figures_are_the_served_variants_row(built_repo):
    facts = facts_of(built_repo)
    label, rows = card.robustness_rows(facts)
    assert "pow2-optimal-refit" in label
    served = next(r for r in rows if r["bits"] == str(facts.model.bits))
    text = card.render(facts)
    assert f"by {served['test_delta_r2_worst']} on the worst split" in text
    assert f"**{served['test_delta_r2_worst']}**" in text
    splits = yaml.safe_load((built_repo / "params.yaml").read_text())["robustness"]["splits"]
    assert f"Over {splits} splits" in text


def test_settings_the_robustness_table_never_measured_are_said_so_not_quoted(built_repo):
    facts = facts_of(built_repo)
    other = facts._replace(params=facts.params | {"quantize": {"rounding": "some-other"}})
    assert card.robustness_rows(other) is None
    text = card.render(other)
    assert "has no variant with this model's settings" in text
    assert "on the worst split" not in text


def test_a_missing_param_the_card_quotes_is_one_line(built_repo):
    with pytest.raises(UserError, match=r"robustness\.splits is missing"):
        facts_of(built_repo, robustness={})


def test_the_stage_refuses_a_missing_input_with_one_line_and_keeps_the_card(repo):
    before = (repo / "models/card.md").read_bytes()
    (repo / "metrics/compare.json").unlink()
    proc = sh(["python", "-m", "stages.card"], repo, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "metrics/compare.json is missing" in proc.stderr
    assert (repo / "models/card.md").read_bytes() == before


def test_an_experiment_rewrites_the_card_from_its_own_figures(repo):
    before = read_json(repo / "metrics/quant.json")
    dvc("exp", "run", "-S", "quantize.margin=0.01", cwd=repo)
    after = read_json(repo / "metrics/quant.json")
    assert after["bits"] < before["bits"]
    from huggingface_hub import ModelCard

    data = ModelCard.load(repo / "models/card.md").data
    assert data.quantization["bits"] == after["bits"]
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {
        k: after[k] for k in ("r2", "rmse", "mae")
    }
    text = (repo / "models/card.md").read_text()
    assert "`margin: 0.01`" in text and f"at {after['bits']} bits the test R²" in text
