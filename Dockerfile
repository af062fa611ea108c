# One image for the CLI, the migrations and the embedding worker (CPU or CUDA).
# The default PyPI torch wheel bundles CUDA; pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for a much smaller CPU-only image.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PLANKTON_HOME=/data/home PLANKTON_STORE=/data/store

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY plankton_db ./plankton_db
COPY worker ./worker
COPY web ./web
COPY migrations ./migrations
COPY sql ./sql
# Editable install: plankton_db finds migrations/ and sql/ next to itself, as in a checkout.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==2.14.1 torchvision==0.29.1 --index-url "$TORCH_INDEX_URL"; fi \
 && pip install -e . \
 && useradd --create-home --uid 1000 plankton \
 && mkdir -p /data/home /data/store && chown -R plankton /data
USER plankton

CMD ["plankton", "--help"]
