"""Validate Kubernetes manifests against published schemas; run in the deploy tool venv.

    python tests/deploy_check.py --kubernetes 1.25 --kubernetes 1.37 --crd SCHEMA.json.gz FILE...

Core kinds go to ``kubernetes-validate`` in strict mode (unknown fields are errors); a kind
whose schema is KServe's (the vendored CRD schema, tests/data/README.md) goes to jsonschema,
made strict the same way. Prints one JSON object per resource:
``{"file", "kind", "name", "checked": [...]}`` or ``{..., "error": "..."}``.
"""

from __future__ import annotations

import argparse
import gzip
import json

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """The CRD schema with unknown fields refused, as ``kubectl apply --validate=strict`` does.

    A structural schema lists every field it keeps; the API server drops (or, strictly,
    refuses) the others, where jsonschema would let them through.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def check(resource: dict, versions: list[str], crds: dict) -> list[str]:
    """The schemas a resource was validated against; raises ValueError naming the problem."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key in crds:
        validator = jsonschema.Draft7Validator(crds[key]["schema"])
        errors = sorted(validator.iter_errors(resource), key=lambda e: list(e.absolute_path))
        if errors:
            where = ".".join(map(str, errors[0].absolute_path)) or "(top)"
            raise ValueError(f"{where}: {errors[0].message}")
        return [crds[key]["name"]]
    checked = []
    for version in versions:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(map(str, err.path)) or "(top)"
            raise ValueError(f"Kubernetes {version}: {where}: {err.message}") from None
        except kubernetes_validate.SchemaNotFoundError:
            raise ValueError(f"no schema for {key[1]} {key[0]} in Kubernetes {version}") from None
        checked.append(f"Kubernetes {version}")
    return checked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes", action="append", required=True)
    parser.add_argument("--crd", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    crds = {}
    for path in args.crd:
        with gzip.open(path) as f:
            doc = json.load(f)
        crds[(f"{doc['group']}/{doc['version']}", doc["kind"])] = {
            "schema": strict(doc["openAPIV3Schema"]),
            "name": f"KServe CRD {doc['group']}/{doc['version']} {doc['kind']}",
        }
    for path in args.files:
        with open(path) as f:
            resources = [r for r in yaml.safe_load_all(f) if r is not None]
        for resource in resources:
            meta = resource.get("metadata") or {}
            out = {"file": path, "kind": resource.get("kind"), "name": meta.get("name")}
            try:
                out["checked"] = check(resource, args.kubernetes, crds)
            except ValueError as err:
                out["error"] = str(err)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
