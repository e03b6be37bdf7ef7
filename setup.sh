#!/usr/bin/env bash
# Quick start, step 1: create .venv, install the pinned requirements and the project
# (editable, so `cali-reg` runs this checkout's code), then run the pipeline.
# Offline, first point scikit-learn at a local copy of the data:
#   export SCIKIT_LEARN_DATA=/absolute/path/to/scikit_learn_data
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
# compat mode: a plain path entry (.pth) instead of setuptools' import hook, whose import
# at interpreter start-up cost every Python process here, each stage and DVC, about 25 ms
python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
  --config-settings editable_mode=compat
# the tools of the tests and .ci/run, among them the S3 server of tests/test_remote.py
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
dvc repro
