# The lfwrap gateway image: the core package only (no torch, no LLaMA-Factory), run as a non-root user.
# Built by `docker compose build gateway` (or `docker build -t lfwrap-gateway .`); configured through
# LFWRAP_* variables (see docker-compose.yml and .env.example). Keys and state live in /data.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wrapper ./wrapper
COPY templates ./templates
COPY datasets ./datasets
COPY rag_docs ./rag_docs
RUN python -m venv /opt/lfwrap && /opt/lfwrap/bin/pip install .

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lfwrap \
    && mkdir /data && chown lfwrap:lfwrap /data
COPY --from=build /opt/lfwrap /opt/lfwrap
ENV PATH=/opt/lfwrap/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LFWRAP_HOME=/data \
    LFWRAP_HOST=0.0.0.0 \
    LFWRAP_PORT=8080
USER lfwrap
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["lfwrap", "gateway"]
