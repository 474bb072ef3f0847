# The tratree operator: slim Python, kopf + the Kubernetes client + boto3, no ML stack.
#   docker build -f images/operator.Dockerfile -t ghcr.io/tratree/tratree-operator:0.1.0 .
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY tratree tratree
COPY operator/tratree_operator operator/tratree_operator
RUN pip install -c requirements/constraints.txt ".[operator]" \
 && rm -rf /src \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "tratree_operator"]
