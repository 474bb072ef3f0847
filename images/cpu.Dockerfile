# CPU stages: expert trajectories, trees (with sentence embeddings: the bundled MiniLM), pairs, MCTS, report.
# Java runs the TextWorldExpress and ScienceWorld jars; torch is the CPU build where its index is reachable.
#   docker build -f images/cpu.Dockerfile -t ghcr.io/tratree/tratree-cpu:0.1.0 .
#   (--build-arg BASE=… for a locally made base; --build-arg TORCH_INDEX=https://pypi.org/simple where only
#   PyPI is reachable: its torch 2.13.0 is the CUDA build, which runs on the CPU too)
# Layers go from what changes least to what changes most: torch, Java, tratree's dependencies, tratree.
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
# slim bases drop the man pages' folders, and the JRE's postinst fails without man1
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
# the dependencies alone (an empty package stands in for tratree), so a change of code or README rebuilds
# one small layer
RUN mkdir tratree && touch README.md tratree/__init__.py \
 && pip install -c requirements/constraints.txt ".[embed,envs,s3,report]" \
 && pip uninstall -y tratree && rm -rf README.md tratree build
COPY README.md ./
COPY tratree tratree
RUN pip install --no-deps . \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
CMD ["tratree", "--help"]
