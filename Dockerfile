# syntax=docker/dockerfile:1
# The training image: the project with the pyproject.toml pins, run by the same scripts/setup.sh as a workstation
# (its Debian packages, the venv, the mediapipe and LPIPS assets), as a non-root user; the entry point is
# `kedro run <args>` (deploy/docker/entrypoint.sh). docs/deploy.md has the build and run commands.
#
#   docker build -t dimo:cuda .        # torch 2.13.0 from PyPI = its CUDA 13.0 build, on a CUDA 13 runtime image
#   docker build -t dimo:cpu --build-arg BASE_IMAGE=ubuntu:24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM ${BASE_IMAGE}
# PyPI's torch 2.13.0 for Linux is the CUDA build (cu13, its CUDA libraries come as pip packages); PyTorch's
# cpu index serves 2.13.0+cpu. Either satisfies the `torch==2.13.0` pin, so setup.sh's `pip install` keeps it.
ARG TORCH_INDEX=https://pypi.org/simple
ARG PYTHON_VERSION=3.11
ARG USER_UID=10001
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
COPY --from=uv /uv /usr/local/bin/uv
WORKDIR /opt/dimo

# Python 3.11 (the version the pins were checked on; Ubuntu 24.04 ships 3.12) as a uv-managed interpreter, and
# the venv with the chosen torch build first.
RUN uv python install "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv .venv \
    && .venv/bin/python -m pip install --upgrade pip setuptools wheel \
    && .venv/bin/python -m pip install --index-url "${TORCH_INDEX}" torch==2.13.0

# Everything else is scripts/setup.sh, as on a workstation: apt packages (as root here), the pinned project
# (`pip install -e .[dev]`), npm's mediapipe pose models, the LPIPS weights, `git init` for DVC and MLflow.
COPY . .
RUN mkdir -p data/01_raw/videos \
    && PYTHON="$(uv python find "${PYTHON_VERSION}")" bash scripts/setup.sh \
    && rm -rf /root/.npm /root/.cache .cache/lpips_src

# The run user owns what a run writes (data, caches, the MLflow store, conf/local); the venv stays root's, read-only.
RUN useradd --create-home --uid "${USER_UID}" --shell /bin/bash dimo \
    && find . -path ./.venv -prune -o -exec chown dimo:dimo {} + \
    && chown dimo:dimo .
USER ${USER_UID}
ENV PATH=/opt/dimo/.venv/bin:${PATH}
VOLUME ["/opt/dimo/data", "/opt/dimo/.cache"]
ENTRYPOINT ["bash", "/opt/dimo/deploy/docker/entrypoint.sh"]
CMD []
