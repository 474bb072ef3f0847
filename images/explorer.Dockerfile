# Exploration and evaluation stages: vLLM generation plus the environments (Java for the
# TextWorldExpress and ScienceWorld jars). vLLM's image brings its own torch and transformers;
# tratree goes on top without the repository's constraints, so vLLM's pins stand.
#   docker build -f images/explorer.Dockerfile -t ghcr.io/tratree/tratree-explorer:0.1.0 .
FROM vllm/vllm-openai:v0.11.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tratree tratree
RUN pip install ".[envs,s3,report]" \
 && rm -rf /src \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /work
USER 1000
ENTRYPOINT []
CMD ["tratree", "--help"]
