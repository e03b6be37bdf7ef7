# The served image: the quantised model and the numpy-only predictor, nothing else.
# No scikit-learn, no DVC, no data download: it runs with --network none.
# Build it after `dvc repro`, which makes the two artefacts it copies:
#   docker build -t cali-reg .
#   docker run --rm cali-reg                      # Sample predictions: [...]
#   docker run -i --rm cali-reg < rows.csv        # one prediction per row
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# numpy pinned as in requirements.txt (tests/test_dockerfile.py keeps the two equal).
RUN pip install --no-cache-dir numpy==2.4.6 \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
COPY stages/__init__.py stages/common.py stages/quantizers.py stages/predict.py stages/
COPY models/quant.json models/
# The first 100 rows of the test split (features only), for the default sample output.
COPY data/sample.csv data/

USER 10001
ENTRYPOINT ["python", "-m", "stages.predict"]
# Print the sample when nothing is piped in; with `docker run -i ... < rows.csv`, predict rows.
CMD ["--sample-if-no-input", "5"]
