# One image for the API, the event ingester and the workers of darts-service.
#
#   docker build -t darts-service .                                   # CPU torch (default)
#   docker build -t darts-service:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
#
# The command picks the role: the default runs the API (with the event ingester inside it);
# `darts-service worker`, `darts-service ingest` and `darts-service migrate` run the other parts.
ARG PYTHON_VERSION=3.11

# --- build: a virtualenv with torch and every dependency (no compiler needed: all wheels) ---------
FROM python:${PYTHON_VERSION}-slim AS build

# torch comes first, pinned and from the chosen index, so pip never resolves a CUDA build by itself.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Every version comes from requirements.lock (`make lock` writes it), as in `make install`. torch
# alone comes from the chosen index, without its dependencies: those come from the lock below.
# DL3013 (unpinned pip install): pip, setuptools and torch are pinned, by the lock and TORCH_SPEC,
# which hadolint cannot read.
WORKDIR /srv/darts
COPY requirements.lock ./
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --constraint requirements.lock --upgrade pip setuptools \
    && pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# Dependencies only (empty packages stand in for the code), so editing the code does not reinstall
# them. An editable install: app/db.py finds the Alembic migrations next to the package, and the
# runtime stage puts the code at the same path.
COPY pyproject.toml README.md ./
RUN mkdir darts_core app worker \
    && touch darts_core/__init__.py app/__init__.py worker/__init__.py \
    && pip install --no-cache-dir --constraint requirements.lock --no-build-isolation -e . \
    && rm -rf darts_core app worker

# --- runtime: the virtualenv and the code, run as an unprivileged user ---------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    LOG_FORMAT=json \
    DATA_DIR=/data \
    ARTIFACT_DIR=/data/artifacts

RUN useradd --create-home --uid 1000 darts \
    && mkdir -p /data/artifacts \
    && chown -R darts:darts /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/darts
COPY pyproject.toml README.md ./
COPY darts_core ./darts_core
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations

# Numeric, so a runtime that checks "runs as non-root" (runAsNonRoot) can verify it.
USER 1000:1000
# Uploads and checkpoints: a volume shared by the API and the workers.
VOLUME ["/data"]
EXPOSE 8000

# The API's liveness; the worker's compose service replaces it with its own (python -m worker.health).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
