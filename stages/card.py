"""Stage card: the quantised model's card (models/card.md) and input schema (models/schema.json).

Both are written from files the other stages made, so they travel with the model
(dvc.yaml's artifacts) and are never edited by hand.
"""

from cali_reg.card import input_schema, load_facts, render
from cali_reg.errors import run
from cali_reg.files import atomic_write_text, write_json
from cali_reg.params import read_params

PATHS = {
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
CARD, SCHEMA = "models/card.md", "models/schema.json"


def main() -> None:
    # split, quantize and robustness are checked by their own stages, which run first
    params = {
        "split": read_params("split"),
        "quantize": read_params("quantize"),
        "robustness": read_params("robustness"),
    }
    facts = load_facts(PATHS, params)
    write_json(SCHEMA, input_schema(facts))
    atomic_write_text(CARD, render(facts))


if __name__ == "__main__":
    run(main)
