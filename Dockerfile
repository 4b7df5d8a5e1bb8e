# hpsearch images. Two targets:
#   cpu: python:3.11-slim with CPU-only torch (study creation, dashboard, proxy, CPU workers)
#   gpu: NVIDIA's CUDA runtime with PyPI's CUDA torch wheels (GPU workers)
#   docker build --target gpu -t hpsearch:gpu .     docker build --target cpu -t hpsearch:cpu .
# Both run as uid 1000 in /app, which root owns. What trials write goes to folders uid 1000 owns:
#   /app/hpsearch-artifacts  checkpoints and the artifact store ([resources] artifacts, default
#                            hpsearch-artifacts, relative to /app); mount a volume there to keep it
#                            (store/ exists for `hpsearch dashboard --artifacts`)
#   /app/data                datasets (data_dir, default data), written when download = true
# A named volume mounted there starts as a copy of the folder, owner included.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# CPU wheels first, so that `pip install .` does not pull the CUDA build of torch.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<3" "torchvision>=0.19,<1"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search search
COPY objectives objectives
COPY storage storage
COPY hpsearch hpsearch
RUN pip install . && useradd --create-home --uid 1000 hpsearch \
    && mkdir -p /app/hpsearch-artifacts/store /app/data \
    && chown -R 1000:1000 /app/hpsearch-artifacts /app/data
COPY studies studies
COPY examples examples
USER 1000:1000
CMD ["hpsearch", "--help"]

FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/hpsearch PATH=/opt/hpsearch/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/hpsearch
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search search
COPY objectives objectives
COPY storage storage
COPY hpsearch hpsearch
# PyPI's Linux torch wheels bundle the CUDA libraries; the base image brings cuDNN and the driver
# libraries come from the host through the NVIDIA container toolkit.
# The base image may have a uid 1000 user already (ubuntu): then it is that one.
RUN pip install . && (useradd --create-home --uid 1000 hpsearch || true) \
    && mkdir -p /app/hpsearch-artifacts/store /app/data \
    && chown -R 1000:1000 /app/hpsearch-artifacts /app/data
COPY studies studies
COPY examples examples
USER 1000:1000
CMD ["hpsearch", "--help"]
