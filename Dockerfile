# One image for the API, the event ingester and the workers of darts-service.
#
#   docker build -t darts-service .                                   # CPU torch (default)
#   docker build -t darts-service:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
#
# The command picks the role: the default runs the API (with the event ingester inside it);
# `darts-service worker`, `darts-service ingest` and `darts-service migrate` run the other parts.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# torch comes first, pinned and from the chosen index, so pip never resolves a CUDA build by itself.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/darts
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# Dependencies before the code, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir darts_core app worker \
    && touch darts_core/__init__.py app/__init__.py worker/__init__.py \
    && pip install -e . \
    && rm -rf darts_core app worker

# An editable install: app/db.py finds the Alembic migrations next to the package.
COPY darts_core ./darts_core
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations

RUN useradd --create-home --uid 1000 darts && mkdir -p /data && chown darts /data
USER darts
# Uploads and checkpoints: a volume shared by the API and the workers.
ENV DATA_DIR=/data \
    ARTIFACT_DIR=/data/artifacts

EXPOSE 8000
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
