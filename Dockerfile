# The samex image: every samex process of docker-compose.yml runs from it (`samex worker`,
# `samex connector …`, `samex simulate …`). Build: `docker build -t samex .`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAMEX_STATE_DIR=/var/lib/samex \
    SAMEX_RULES_DIR=/app/rules \
    SAMEX_WEB_HOST=0.0.0.0 \
    SAMEX_LOG_FORMAT=json

WORKDIR /app
# Dependencies first (a layer that survives code changes), then the code. The install is editable so
# that the package finds schemas/ and rules/ next to it, as in a checkout.
COPY pyproject.toml README.md ./
RUN mkdir -p router connectors && touch router/__init__.py connectors/__init__.py \
    && pip install . && pip uninstall -y samex && rm -rf router connectors build
COPY router ./router
COPY connectors ./connectors
COPY schemas ./schemas
COPY rules ./rules
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/samex --create-home samex
USER samex
VOLUME ["/var/lib/samex"]
ENTRYPOINT ["samex"]
CMD ["--help"]
