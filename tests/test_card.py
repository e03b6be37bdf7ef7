"""The model card and input schema: parsed by Hugging Face's own parser, figures from the files."""

import csv
import hashlib
import json
import tomllib
from pathlib import Path

import pytest
import yaml

from cali_reg import card
from cali_reg.errors import UserError
from tests.helpers import ROOT, read_json, run_stages, set_params, sh

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
    # the example is the first sample row, and its answer what the predictor prints, to the
    # last bits of the sum (the card's is correctly rounded; the predictor sums with BLAS)
    example = schema["input_example"]
    assert example["columns"] == names
    rows = "\n".join([",".join(names), ",".join(map(repr, example["data"][0]))]) + "\n"
    out = sh(["cali-reg", "predict", "--model", "models/quant.json"], built_repo, input=rows)
    printed = [float(v) for v in out.stdout.split()]
    assert len(printed) == len(schema["output_example"]) == 1
    assert printed[0] == pytest.approx(schema["output_example"][0], rel=1e-13, abs=1e-13)
    card_text = (built_repo / "models/card.md").read_text()
    assert json.dumps({"predictions": schema["output_example"]}) in card_text


TRAIN_RANGES = """
import json
from cali_reg.data import read_xy
X, _ = read_xy("data/train.csv")
print(json.dumps([[float(lo), float(hi)] for lo, hi in zip(X.min(0), X.max(0))]))
"""


def robustness_csv(repo) -> dict:
    """plots/robustness.csv read independently of the card: {(variant, bits): row}."""
    with (repo / "plots/robustness.csv").open(newline="") as fh:
        return {(r["variant"], r["bits"]): r for r in csv.DictReader(fh)}


def served_as(facts, **settings):
    """The facts with the model re-quantised from the float model at ``settings`` (scheme and
    bits fixed), and params.yaml's quantize section saying so, as `dvc exp run -S` would."""
    from cali_reg.data import read_xy
    from cali_reg.model import FloatModel, load_model
    from cali_reg.quantize import quantize

    repo = Path(facts.model_path).parents[1]
    fmodel = load_model(repo / "models/float.json", expect=FloatModel)
    params = facts.params["quantize"] | settings
    kw = {k: params[k] for k in ("padding", "half_width", "rounding", "refit_intercept")}
    model = quantize(
        fmodel.coef,
        fmodel.intercept,
        scheme=settings["scheme"],
        bits=settings["bits"],
        feature_names=fmodel.feature_names,
        calibration=read_xy(repo / "data/train.csv"),
        **kw,
    )
    return facts._replace(model=model, params=facts.params | {"quantize": params})


def test_the_default_selection_is_quoted_from_its_selected_row(built_repo):
    """Chosen by margin: the selected-m<margin> row, then the served format at every width."""
    facts = facts_of(built_repo)
    quantize = facts.params["quantize"]
    assert quantize["scheme"] == quantize["bits"] == "auto", "written for selection by margin"
    table = robustness_csv(built_repo)
    selected = table[f"selected-m{quantize['margin']:g}", "0"]
    text = card.render(facts)
    section = text.split("### Over ")[1].split("## How to use it")[0]
    for key in ("test_delta_r2_mean", "test_delta_r2_worst", "train_delta_r2_mean"):
        assert selected[key] in section
    assert f"by {selected['test_delta_r2_worst']} on the worst split, the training R²" in section
    assert f"at most {selected['payload_bytes']} bytes" in section
    assert f"row `selected-m{quantize['margin']:g}`" in section
    # the served format's rows at each width, the model's own in bold and no other
    model = facts.model
    name, rows = card.variant_rows(facts)
    assert name == model.scheme  # the minifloat formats have one variant each
    widths = [r["bits"] for r in rows]
    assert str(model.bits) in widths and len(widths) > 1
    served = table[name, str(model.bits)]
    assert served["payload_bytes"] == str(model.payload_bytes)
    assert (
        f"| **{model.bits}** | **{model.payload_bytes}** | **{served['test_delta_r2_mean']}** "
        f"| **{served['test_delta_r2_worst']}** | **{served['train_delta_r2_worst']}** |"
    ) in section
    assert section.count("**") == 2 * 5
    others = [r for (variant, bits), r in table.items() if variant == name and r is not served]
    assert [r["bits"] for r in others] == [b for b in widths if b != str(model.bits)]
    for r in others:
        assert f"| {r['bits']} | {r['payload_bytes']} | {r['test_delta_r2_mean']} |" in section
    assert "Format and width were chosen by margin" in text
    assert f"`margin` = {quantize['margin']} below" in text
    splits = yaml.safe_load((built_repo / "params.yaml").read_text())["robustness"]["splits"]
    assert f"Over {splits} splits" in text


def test_a_selection_the_robustness_stage_did_not_repeat_is_said_so(built_repo):
    """Another margin (or settings, or one of scheme and bits fixed): no selected row is
    quoted, only the served format's rows, with the reason."""
    facts = facts_of(built_repo)
    table = robustness_csv(built_repo)
    quantize = facts.params["quantize"]
    cases = {
        "margin": ({"margin": 0.0123}, "has no `selected-m0.0123` row"),
        "settings": ({"padding": 0.2}, "selects with `padding: 0.05`"),
        "bits fixed": ({"bits": facts.model.bits}, "scheme and bits both auto only"),
    }
    for changed, reason in cases.values():
        other = facts._replace(params=facts.params | {"quantize": quantize | changed})
        row, why = card.selection_row(other)
        assert row is None and reason in why
        text = card.render(other)
        assert "was not repeated over the splits for these settings" in text and reason in text
        assert "The selection itself" not in text and "row `selected-m" not in text
        served = table[facts.model.scheme, str(facts.model.bits)]
        assert (
            f"at {facts.model.bits} bits the test R² moves by {served['test_delta_r2_mean']} "
            f"on average and by {served['test_delta_r2_worst']} on the worst split"
        ) in text


def test_fixed_scheme_and_bits_quote_that_variants_rows(built_repo):
    """pow2 at 4 bits, optimal codes: the pow2-optimal-refit rows, no selection at all."""
    facts = served_as(
        facts_of(built_repo),
        scheme="pow2",
        bits=4,
        rounding="optimal",
        refit_intercept=True,
    )
    assert card.selection_row(facts) == (None, "")
    name = card.variant_rows(facts)[0]
    assert name == "pow2-optimal-refit"
    served = robustness_csv(built_repo)[name, "4"]
    assert served["payload_bytes"] == str(facts.model.payload_bytes)
    text = card.render(facts)
    assert "Format and width are fixed in `params.yaml` (`scheme: pow2`, `bits: 4`)" in text
    assert f"by {served['test_delta_r2_worst']} on the worst split" in text
    assert f"| **4** | **{served['payload_bytes']}** |" in text
    assert "uses `rounding`, `refit_intercept` and ignores `padding`, `half_width`" in text
    assert "selected-m" not in text and "chosen by margin" not in text
    # the same format with the other rounding the robustness stage repeats is that variant
    nearest = served_as(facts, scheme="pow2", bits=4, rounding="nearest", refit_intercept=True)
    assert card.variant_rows(nearest)[0] == "pow2-nearest-refit"


def test_settings_the_robustness_table_never_measured_are_said_so_not_quoted(built_repo):
    facts = served_as(
        facts_of(built_repo),
        scheme="affine",
        bits=4,
        rounding="nearest",
        refit_intercept=False,
    )
    assert card.variant_rows(facts) is None
    text = card.render(facts)
    assert "has no variant with this model's format and settings" in text
    assert "on the worst split" not in text and "**" not in text.split("### Over")[1]


def test_params_that_contradict_the_model_file_are_one_line(built_repo):
    model = read_json(built_repo / "models/quant.json")
    other = next(s for s in ("pow2", "affine") if s != model["scheme"])
    with pytest.raises(UserError, match=rf"quantize\.scheme: {other}; re-run 'dvc repro'"):
        facts_of(built_repo, quantize={"scheme": other, "bits": "auto", "margin": 0.001})


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
    # the stages `dvc exp run -S quantize.margin=0.01` runs (test_pipeline.py runs it)
    set_params(repo, quantize={"margin": 0.01})
    run_stages(repo, "quantize", "evaluate", "card")
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
    # the robustness stage selected at robustness.margin, not at 0.01: not quoted as this one's
    assert "has no `selected-m0.01` row" in text and "row `selected-m" not in text
