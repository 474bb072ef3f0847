# GPU training stages (SFT, DPO): CUDA PyTorch + transformers + TRL + PEFT + accelerate.
# The torch wheel carries its CUDA runtime; the node needs only the NVIDIA driver.
#   docker build -f images/trainer.Dockerfile -t ghcr.io/tratree/tratree-trainer:0.1.0 .
#   (torch 2.13.0 ships CUDA 12.6 and 13.0 builds: the default is CUDA 12.6, for drivers >= 560;
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 or https://pypi.org/simple (PyPI's
#   build is CUDA 13.0) for drivers >= 580)
# Layers go from what changes least to what changes most: torch, tratree's dependencies, tratree.
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
# the dependencies alone (an empty package stands in for tratree), so a change of code or README rebuilds
# one small layer
RUN mkdir tratree && touch README.md tratree/__init__.py \
 && pip install -c requirements/constraints.txt ".[train,embed,s3]" \
 && pip uninstall -y tratree && rm -rf README.md tratree build
COPY README.md ./
COPY tratree tratree
RUN pip install --no-deps . \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
CMD ["tratree", "--help"]
