"""The model card and input schema of the quantised model, written from the pipeline's outputs.

Every figure is copied from a file the pipeline wrote: the model file (scheme, bits,
feature names and their order, its SHA-256), the metrics, params.yaml, the robustness
table, the training and test rows, and the test predictions. Nothing is typed by hand,
so the card stays right after any experiment or change of the default.

The card is a Hugging Face model card (``modelcard.md`` spec): a YAML header with
license, library, tags, datasets and the test metrics as ``model-index``, then Markdown.
The schema is what MLflow keeps as a model's signature and input example: the input
columns with their dtypes, in the order the coefficients expect them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from cali_reg.data import COLUMNS, FEATURES, TARGET, read_table
from cali_reg.errors import UserError
from cali_reg.formats import FORMATS
from cali_reg.model import QuantizedModel, exact_predict, load_model
from cali_reg.quantize import AUTO
from cali_reg.robustness import BEST_SETTINGS, SELECTED, repeated

ARTIFACT = "quant-model"  # its name under artifacts: in dvc.yaml, and on the V2 endpoint
LICENSE = "mit"  # the project's (LICENSE, pyproject.toml), in the Hub's spelling
LIBRARY = "cali-reg"  # what loads the model file: this package, with numpy alone
DATASET = "california_housing"  # scikit-learn's name; the Hub has no canonical copy
# The dvc.yaml artifact's labels first (a test keeps them in), then the task and tools.
TAGS = (
    "linear-regression",
    "quantized",
    "california-housing",
    "tabular-regression",
    "scikit-learn",
    "dvc",
)
METRICS = {"r2": "R²", "rmse": "RMSE ($100k)", "mae": "MAE ($100k)"}
PORT = 8080  # cali-reg serve's default
MLFLOW_TYPE, V2_DATATYPE = "double", "FP64"  # every input is a float64 column
# The params the card quotes by name; the quantize section is quoted whole, whatever its keys.
PARAMS_QUOTED = {
    "split": ("test_size", "seed"),
    "quantize": ("scheme", "bits", "margin"),
    "robustness": ("splits", "margin"),
}


class Facts(NamedTuple):
    """What the card says, as read from the pipeline's files."""

    model: QuantizedModel
    model_path: str
    model_sha256: str
    metrics: dict  # {"float": ..., "quant": ..., "compare": ...}, the metrics files
    params: dict  # {"split": ..., "quantize": ..., "robustness": ...}, from params.yaml
    robustness: list  # rows of plots/robustness.csv, as dicts of strings
    train: np.ndarray  # the training rows, features then target
    n_test: int
    test_predictions: np.ndarray  # the quantised model's, from plots/predictions.csv
    example: np.ndarray  # one row of features (the first of data/sample.csv)


def read_csv_rows(path: Path | str) -> list[dict[str, str]]:
    """A CSV file with a header as a list of dicts; UserError if missing or empty."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    if not rows:
        raise UserError(f"{path} has no rows; re-run 'dvc repro' to rebuild it")
    return rows


def read_json(path: Path | str) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-run 'dvc repro'") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object; re-run 'dvc repro'")
    return doc


def column(rows: list[dict[str, str]], name: str, path: str) -> np.ndarray:
    """One numeric column of ``read_csv_rows`` output; UserError naming the file if absent."""
    try:
        return np.array([float(r[name]) for r in rows])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no numeric column {name!r}; re-run 'dvc repro'") from None


def sha256_of(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- what the card says -------------------------------------------------------------


def selection_row(facts: Facts) -> tuple[dict | None, str]:
    """The robustness row of the selection by margin that chose the served model.

    (row, "") when the robustness stage repeated this very selection: scheme and
    bits both auto, its settings, at quantize.margin (row ``selected-m<margin>``).
    (None, why) when the model was chosen by margin but that selection was not
    measured; (None, "") when scheme and bits were fixed, so nothing was selected.
    """
    quantize, rob = facts.params["quantize"], facts.params["robustness"]
    if quantize["scheme"] != AUTO and quantize["bits"] != AUTO:
        return None, ""
    if quantize["scheme"] != AUTO or quantize["bits"] != AUTO:
        return None, "the robustness stage repeats it with scheme and bits both auto only"
    for key, value in BEST_SETTINGS.items():
        if quantize.get(key) != value:
            return None, f"the robustness stage selects with `{key}: {json.dumps(value)}`"
    name = f"{SELECTED}-m{quantize['margin']:g}"
    rows = [r for r in facts.robustness if r.get("variant") == name and r.get("bits") == "0"]
    if len(rows) != 1:
        return None, (
            f"`plots/robustness.csv` has no `{name}` row "
            f"(the robustness stage selects at `robustness.margin: {json.dumps(rob['margin'])}`)"
        )
    return rows[0], ""


def variant_rows(facts: Facts) -> tuple[str, list[dict]] | None:
    """The served model's format as the robustness stage repeats it: its name and rows by width.

    The repeated variant whose scheme is the model file's and whose other settings
    agree with params.yaml's quantize section, with a row at the model's width and
    payload. None when no variant (or more than one) fits: the table was not measured
    for these settings, and the card says so rather than quote another variant.
    """
    model, quantize = facts.model, facts.params["quantize"]
    fits = []
    for name, settings in repeated().items():
        if settings["scheme"] != model.scheme:
            continue
        if any(quantize.get(k) != v for k, v in settings.items() if k != "scheme"):
            continue
        rows = [r for r in facts.robustness if r.get("variant") == name]
        served = [r for r in rows if r["bits"] == str(model.bits)]
        if len(served) == 1 and served[0]["payload_bytes"] == str(model.payload_bytes):
            fits.append((name, rows))
    return fits[0] if len(fits) == 1 else None


def how_chosen(facts: Facts) -> str:
    """How params.yaml's quantize section chose the served format and width, in words."""
    quantize = facts.params["quantize"]
    scheme, bits, margin = quantize["scheme"], quantize["bits"], quantize["margin"]
    if scheme != AUTO and bits != AUTO:
        return (
            f"Format and width are fixed in `params.yaml` (`scheme: {scheme}`, `bits: {bits}`), "
            "so `margin` is not used."
        )
    pool = "every format" if scheme == AUTO else f"`{scheme}`"
    pool += " at every width it offers" if bits == AUTO else f" at {bits} bits"
    return (
        f"Format and width were chosen by margin (`scheme: {scheme}`, `bits: {bits}` in "
        f"`params.yaml`): of {pool}, the smallest payload whose training R² is at most "
        f"`margin` = {margin} below the float model's (among equal payloads the most "
        "accurate; the most accurate of all if none is within it)."
    )


def format_reads(scheme: str, quantize: dict) -> str:
    """ "; the `x` format uses ... and ignores ...": the quantize settings beyond scheme,
    bits and margin, as the format reads them ("" if there are none)."""
    others = [k for k in quantize if k not in ("scheme", "bits", "margin")]
    used = [k for k in others if k in FORMATS[scheme].reads]
    ignored = [k for k in others if k not in FORMATS[scheme].reads]
    verbs = [
        f"{verb} {', '.join(f'`{k}`' for k in keys)}"
        for verb, keys in (("uses", used), ("ignores", ignored))
        if keys
    ]
    return f"; the `{scheme}` format " + " and ".join(verbs) if verbs else ""


def robustness_text(facts: Facts) -> str:
    """The 20-split paragraph: the selection's row, then the served format at every width.

    Only rows measured for the served model's own selection and settings are quoted;
    otherwise the text says which are missing.
    """
    model, quantize = facts.model, facts.params["quantize"]
    splits = facts.params["robustness"]["splits"]
    over = f"{splits} seeded train/test splits (random_state 0 to {splits - 1})"
    selected, why_not = selection_row(facts)
    variant = variant_rows(facts)
    parts = []
    if selected is not None:
        parts.append(
            f"The selection itself (scheme and bits `auto`, margin {quantize['margin']}) "
            f"repeated on {over}, the float model re-fitted and the format and width chosen "
            f"on each split's training rows (row `{selected['variant']}` of "
            f"`plots/robustness.csv`): it picked payloads of at most "
            f"{selected['payload_bytes']} bytes; the test R² moved by "
            f"{selected['test_delta_r2_mean']} on average and by "
            f"{selected['test_delta_r2_worst']} on the worst split, the training R² by "
            f"{selected['train_delta_r2_mean']} on average and by "
            f"{selected['train_delta_r2_worst']} on the worst split."
        )
    elif why_not:
        parts.append(
            f"The selection by margin that chose this model was not repeated over the "
            f"splits for these settings: {why_not}."
        )
    if variant is None:
        parts.append(
            f"`plots/robustness.csv` has no variant with this model's format and settings "
            f"({model.scheme}, {model.bits} bits, {_settings(quantize)}), so no figure of "
            "it over many splits is quoted."
        )
        return "\n\n".join(parts)
    name, rows = variant
    served = next(r for r in rows if r["bits"] == str(model.bits))
    who = f"variant `{name}`, “{rows[0]['label']}”"
    if selected is not None:
        intro = (
            f"The served format alone ({who}) at each width over the same splits, the "
            f"codes chosen on each split's training rows (this model's width in bold):"
        )
    else:
        intro = (
            f"The fit and this quantisation ({who}) repeated on {over}, the codes chosen "
            f"on each split's training rows: at {model.bits} bits the test R² moves by "
            f"{served['test_delta_r2_mean']} on average and by "
            f"{served['test_delta_r2_worst']} on the worst split. Every width of the "
            "variant (`plots/robustness.csv`; this model's in bold):"
        )
    keys = ("bits", "payload_bytes", "test_delta_r2_mean", "test_delta_r2_worst")
    keys += ("train_delta_r2_worst",)
    table = _table(
        ["bits", "payload (bytes)", "mean test ΔR²", "worst test ΔR²", "worst training ΔR²"],
        [[f"**{r[k]}**" if r is served else r[k] for k in keys] for r in rows],
    )
    parts.append(f"{intro}\n\n{table}")
    return "\n\n".join(parts)


def eval_results(facts: Facts) -> list[dict]:
    """The ``model-index`` entry: the quantised model's test metrics, as the Hub's spec has it."""
    split = facts.params["split"]
    return [
        {
            "name": ARTIFACT,
            "results": [
                {
                    "task": {"type": "tabular-regression", "name": "Tabular Regression"},
                    "dataset": {
                        "type": DATASET,
                        "name": "California Housing",
                        "split": f"test (test_size {split['test_size']}, seed {split['seed']})",
                    },
                    "metrics": [
                        {"type": key, "value": facts.metrics["quant"][key], "name": f"test {name}"}
                        for key, name in METRICS.items()
                    ],
                }
            ],
        }
    ]


def metadata(facts: Facts) -> dict:
    """The YAML header: the Hub's fields, then the quantisation and the file, machine-readable."""
    quant, model = facts.metrics["quant"], facts.model
    return {
        "license": LICENSE,
        "library_name": LIBRARY,
        "pipeline_tag": "tabular-regression",
        "tags": [*TAGS, model.scheme, f"{model.bits}-bit"],
        "datasets": [DATASET],
        "metrics": list(METRICS),
        "model-index": eval_results(facts),
        "quantization": {
            "scheme": model.scheme,
            "bits": model.bits,
            "payload_bytes": quant["payload_bytes"],
            "float_payload_bytes": facts.metrics["float"]["payload_bytes"],
        },
        "model_file": {
            "path": facts.model_path,
            "sha256": facts.model_sha256,
            "bytes": quant["file_bytes"],
        },
    }


def input_schema(facts: Facts) -> dict:
    """Inputs (names, dtypes, order), output, and an example: MLflow's signature, as JSON."""
    names = list(facts.model.feature_names)
    low, high = facts.train[:, : len(names)].min(axis=0), facts.train[:, : len(names)].max(axis=0)
    return {
        "model": ARTIFACT,
        "model_file": facts.model_path,
        "model_sha256": facts.model_sha256,
        "inputs": [
            {
                "name": name,
                "position": i,
                "type": MLFLOW_TYPE,
                "datatype": V2_DATATYPE,
                "required": True,
                "training_min": float(low[i]),
                "training_max": float(high[i]),
            }
            for i, name in enumerate(names)
        ],
        "outputs": [
            {"name": TARGET, "type": MLFLOW_TYPE, "datatype": V2_DATATYPE, "unit": "$100,000"}
        ],
        "input_example": {"columns": names, "data": [facts.example.tolist()]},
        "output_example": exact_predict(
            facts.example[None, :], facts.model.coef, facts.model.intercept
        ).tolist(),
    }


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _settings(section: dict) -> str:
    return ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in section.items())


def _f(value) -> str:
    return repr(float(value))


def _v2_request(inputs: list[dict]) -> str:
    """A V2 request body, one input per line."""
    return '{\n  "inputs": [\n' + ",\n".join(f"    {json.dumps(i)}" for i in inputs) + "\n  ]\n}"


def render(facts: Facts) -> str:
    """The card's text: the YAML header, then the Markdown body."""
    model, metrics = facts.model, facts.metrics
    quant, flt, cmp_ = metrics["quant"], metrics["float"], metrics["compare"]
    schema = input_schema(facts)
    names = list(model.feature_names)
    n_train, n_features = len(facts.train), len(names)
    target = facts.train[:, -1]
    example = dict(zip(names, facts.example.tolist(), strict=True))
    answer = schema["output_example"][0]
    split, splits = facts.params["split"], facts.params["robustness"]["splits"]
    settings = _settings(facts.params["quantize"])
    reads = format_reads(model.scheme, facts.params["quantize"])
    header = yaml.safe_dump(metadata(facts), sort_keys=False, allow_unicode=True)

    mlflow_body = {"dataframe_split": {"columns": names, "data": [facts.example.tolist()]}}
    v2_inputs = [
        {"name": n, "shape": [1], "datatype": V2_DATATYPE, "data": [v]} for n, v in example.items()
    ]
    features = _table(
        ["position", "name", "dtype", "training min", "training max"],
        [
            [i["position"], f"`{i['name']}`", "float64", i["training_min"], i["training_max"]]
            for i in schema["inputs"]
        ],
    )
    scores = _table(
        ["model", *METRICS.values(), "bits", "payload (bytes)", "file (bytes)"],
        [
            [label, *(m[k] for k in METRICS), m["bits"], m["payload_bytes"], m["file_bytes"]]
            for label, m in (("float (float64)", flt), (f"**{ARTIFACT}**", quant))
        ],
    )
    preds = facts.test_predictions
    return f"""---
{header}---

# {ARTIFACT}: California house values from {n_features} numbers, in {quant["payload_bytes"]} bytes

A linear regression of a California census block group's median house value (in units
of $100,000) on {n_features} numeric features, fitted with scikit-learn's `LinearRegression`,
its parameters then quantised: scheme `{model.scheme}`, {model.bits} bits per coefficient,
{quant["payload_bytes"]} bytes of parameters against the float model's {flt["payload_bytes"]}.
On the held-out test rows it scores R² {quant["r2"]} (the float model: {flt["r2"]}).
It is served by `cali-reg` with numpy alone, from a plain JSON file: no pickle, no
scikit-learn.

This card is written by the pipeline (`dvc repro`, stage `card`) from the model file, the
metrics, `params.yaml` and the robustness table. Do not edit it by hand.

## What it is for

- Estimating the median house value of a block group in the 1990 California census from
  its {n_features} features, where a coarse estimate is enough (the test RMSE is
  {quant["rmse"]}, that is about ${quant["rmse"] * 100_000:,.0f}).
- Studying how far a model can be compressed: the same fit, quantised, next to its
  float original, with every figure reproducible by `dvc repro`.
- A reference for serving a tiny model over MLflow's and the Open Inference Protocol's
  HTTP APIs.

## What it is not for

- **Valuing a house, or any decision about a person** (lending, insurance, pricing,
  housing): the rows are block-group aggregates from 1990, not homes, and prices have
  changed since.
- **Values above the data's cap**: the target stops at {_f(target.max())}, where
  {int(np.sum(target == target.max()))} of the {n_train} training rows sit (the data set
  top-codes higher values), so the model never saw more.
- **Rows outside the training ranges** (table below): a linear model extrapolates without
  bound. Even on the test rows its predictions run from {_f(preds.min())} to
  {_f(preds.max())}, outside the target's range [{_f(target.min())}, {_f(target.max())}].
- **Explaining causes**: the coefficients describe correlations in these {n_train} rows.

## Training data and split

California Housing (StatLib, derived from the 1990 U.S. census, one row per block group),
as scikit-learn's `fetch_california_housing` ships it: {n_train + facts.n_test} rows,
{n_features} features, target `{TARGET}`. It was split once with scikit-learn's
`train_test_split` ({_settings(split)}): {n_train} rows to fit and quantise on,
{facts.n_test} held out for the scores below. The features, in the order the model takes
them (`models/schema.json`):

{features}

## Quantisation

The float model's {n_features} coefficients become {model.bits}-bit codes under the
`{model.scheme}` scheme; the stored arrays that inference needs take
{quant["payload_bytes"]} bytes against {flt["payload_bytes"]} for the float64 weights (ratio
{cmp_["size_ratio"]}). How the formats work and how their bytes are laid out:
`docs/quantisation.md` in the repository.

{how_chosen(facts)} Settings (`params.yaml`, section `quantize`): {settings}{reads}.

On the test split, quantised minus float: R² {cmp_["delta_r2"]}, RMSE {cmp_["delta_rmse"]},
MAE {cmp_["delta_mae"]}; the largest change of a single prediction is
{cmp_["max_abs_pred_diff"]} ($100k).

{scores}

### Over {splits} splits

{robustness_text(facts)}

## How to use it

Get the file, by version, from the model registry (`docs/release.md`):

```bash
dvc artifacts get https://github.com/ORG/cali-reg {ARTIFACT} --rev vX.Y.Z
```

Its SHA-256 is `{facts.model_sha256}`; the server reports it as `model_sha256` on
`GET /version`, so a client can check which model answered.

Predict from the command line, rows as CSV (a header naming the {n_features} features, in
any order) or JSON:

```bash
cali-reg predict --model {facts.model_path} rows.csv    # one prediction per row
cali-reg predict --sample 5                          # 5 rows of the test split
```

Serve it over HTTP (`cali-reg serve --model {facts.model_path}`, port {PORT}; or the Docker
image: `docker run --rm -p {PORT}:{PORT} IMAGE serve`). MLflow's scoring protocol, the
first row of `data/sample.csv`:

```bash
curl -s http://127.0.0.1:{PORT}/invocations -H 'Content-Type: application/json' \\
  -d '{json.dumps(mlflow_body)}'
```

answers `{json.dumps({"predictions": [answer]})}`. The Open Inference Protocol (KServe V2),
one input per feature:

```bash
curl -s http://127.0.0.1:{PORT}/v2/models/{ARTIFACT}/infer \\
  -H 'Content-Type: application/json' -d @request.json
```

with `request.json`:

```json
{_v2_request(v2_inputs)}
```

answers one `FP64` output whose `data` is `[{answer!r}]`. (The last digit or two of an
answer can differ between CPUs: the server sums with the machine's BLAS kernel, and this
figure is the correctly rounded sum.)

## Files

| file | what |
|---|---|
| `{facts.model_path}` | the model: scheme, bits, feature names, the stored arrays (plain JSON) |
| `models/schema.json` | inputs (names, dtypes, order, training ranges), output, an example |
| `models/card.md` | this card |
"""


# --- reading the pipeline's files ------------------------------------------------------


def load_facts(paths: dict[str, str], params: dict) -> Facts:
    """Read every file the card quotes; each problem is one UserError naming the file."""
    for section, keys in PARAMS_QUOTED.items():
        missing = [k for k in keys if k not in params.get(section, {})]
        if missing:
            raise UserError(
                f"params.yaml: {section}.{missing[0]} is missing, and the model card quotes it; "
                "restore it from git"
            )
    model = load_model(paths["model"], expect=QuantizedModel)
    if sorted(model.feature_names) != sorted(FEATURES):
        raise UserError(
            f"{paths['model']} expects features {', '.join(model.feature_names)}, "
            f"not the data's {', '.join(FEATURES)}; re-run 'dvc repro -f quantize'"
        )
    quantize = params["quantize"]
    for key, value in (("scheme", model.scheme), ("bits", model.bits)):
        if quantize[key] not in (AUTO, value):
            raise UserError(
                f"{paths['model']} is {model.scheme} at {model.bits} bits, but params.yaml has "
                f"quantize.{key}: {quantize[key]}; re-run 'dvc repro' to rebuild the model"
            )
    # the data's columns in the model's order, the target last
    order = [FEATURES.index(name) for name in model.feature_names]
    train = read_table(paths["train"], COLUMNS)[:, [*order, len(FEATURES)]]
    sample = read_table(paths["sample"], FEATURES)[:, order]
    return Facts(
        model=model,
        model_path=paths["model"],
        model_sha256=sha256_of(paths["model"]),
        metrics={k: read_json(paths[k]) for k in ("float", "quant", "compare")},
        params=params,
        robustness=read_csv_rows(paths["robustness"]),
        train=train,
        n_test=len(read_table(paths["test"], COLUMNS)),
        test_predictions=column(read_csv_rows(paths["predictions"]), "quant", paths["predictions"]),
        example=sample[0],
    )
