# Exploration and evaluation stages: vLLM generation plus the environments (Java for the
# TextWorldExpress and ScienceWorld jars). vLLM comes from PyPI at a release built on torch 2.13 and
# transformers 5 (the versions tratree trains with, so it reads the tokenizers and configs they write);
# tratree and PEFT go on top without the repository's constraints, so vLLM's own pins stand.
#   docker build -f images/explorer.Dockerfile -t ghcr.io/tratree/tratree-explorer:0.1.0 .
# torch and Java come first, as in the cpu image, so images built from one base share those layers.
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
ARG VLLM_VERSION=0.30.0
RUN pip install "vllm==${VLLM_VERSION}" "peft>=0.21,<1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tratree tratree
RUN pip install ".[envs,s3,report]" \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
CMD ["tratree", "--help"]
