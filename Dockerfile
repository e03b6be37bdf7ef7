# The served image: the cali_reg package (numpy only) and the two model files, nothing else.
# No scikit-learn, no DVC, no data download: it runs with --network none.
# Build it after `dvc repro`, which makes the artefacts it copies:
#   docker build -t cali-reg .
#   docker run --rm cali-reg                               # Sample predictions: [...]
#   docker run -i --rm cali-reg < rows.csv                 # one prediction per row
#   docker run -i --rm cali-reg predict --id-column id < rows.csv
#   docker run --rm -p 8080:8080 cali-reg serve           # HTTP: MLflow's protocol and V2
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CALI_REG_HOME=/app \
    CALI_REG_HOST=0.0.0.0

# numpy, and the server of `cali-reg serve` (its extra 'serve'), pinned as in
# requirements.txt (tests/test_dockerfile.py keeps them equal).
RUN pip install --no-cache-dir numpy==2.4.6 granian==2.8.7 orjson==3.13.0 prometheus-client==0.26.0 \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

# The package, installed like any other (its one dependency, numpy, is already there).
COPY pyproject.toml README.md LICENSE /tmp/cali-reg/
COPY cali_reg /tmp/cali-reg/cali_reg
RUN pip install --no-cache-dir --no-deps /tmp/cali-reg && rm -rf /tmp/cali-reg

WORKDIR /app
COPY models/quant.json models/float.json models/
# The first 100 rows of the test split (features only), for the default sample output.
COPY data/sample.csv data/

USER 10001
EXPOSE 8080
# For `serve` (the default command exits after printing the sample): the Open Inference
# Protocol's readiness, as deploy/'s probes ask it. Podman keeps it only in Docker's image
# format: `podman build --format docker` (docs/docker.md).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]
ENTRYPOINT ["cali-reg"]
# Print the sample when nothing is piped in; with `docker run -i ... < rows.csv`, predict rows.
CMD ["predict", "--sample-if-no-input", "5"]
