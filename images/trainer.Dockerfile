# GPU training stages (SFT, DPO): CUDA PyTorch + transformers + TRL + PEFT + accelerate.
# The torch wheel carries its CUDA runtime; the node needs only the NVIDIA driver.
#   docker build -f images/trainer.Dockerfile -t ghcr.io/tratree/tratree-trainer:0.1.0 .
#   (torch 2.13.0 ships CUDA 12.6 and 13.0 builds: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130
#   for drivers >= 580; https://pypi.org/simple gives PyPI's build, which is CUDA 12.6 too)
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY tratree tratree
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0" \
 && pip install -c requirements/constraints.txt ".[train,embed,s3]" \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
CMD ["tratree", "--help"]
