# The tratree operator: slim Python, kopf (its aiohttp is the operator's API client) + boto3; no ML stack and no
# kubernetes client (kopf would import it whenever installed: ~60 MiB of the operator's memory).
#   docker build -f images/operator.Dockerfile -t ghcr.io/tratree/tratree-operator:0.1.0 .
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
# the dependencies alone (empty packages stand in), so a change of code or README rebuilds one small layer
RUN mkdir -p tratree operator/tratree_operator && touch README.md tratree/__init__.py operator/tratree_operator/__init__.py \
 && pip install -c requirements/constraints.txt ".[operator]" \
 && pip uninstall -y tratree && rm -rf README.md tratree operator build
COPY README.md ./
COPY tratree tratree
COPY operator/tratree_operator operator/tratree_operator
RUN pip install --no-deps . \
 && rm -rf /src \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin tratree
WORKDIR /
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "tratree_operator"]
