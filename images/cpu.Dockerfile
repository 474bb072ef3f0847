# CPU stages: expert trajectories, trees (with sentence embeddings), pairs, MCTS, report.
# Java runs the TextWorldExpress and ScienceWorld jars; torch is the CPU build.
#   docker build -f images/cpu.Dockerfile -t ghcr.io/tratree/tratree-cpu:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY tratree tratree
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install -c requirements/constraints.txt ".[embed,envs,s3,report]" \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
CMD ["tratree", "--help"]
