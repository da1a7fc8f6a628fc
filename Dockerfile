# syntax=docker/dockerfile:1
# Chronicle server image: build wheels in one stage, run them as a non-root
# user in a slim one. The same steps run in CI in a plain venv
# (tools/check_dockerfile_steps.sh), since no Docker engine runs there.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CONSTRAINT=/src/constraints.txt
COPY pyproject.toml constraints.txt README.md ./
COPY tools tools
COPY protos protos
COPY service service
COPY domain_plugins domain_plugins
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/chronicle chronicle
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels chronicle && rm -rf /wheels
USER chronicle
WORKDIR /var/lib/chronicle
# Owned by the runtime user, so a volume mounted here starts writable.
RUN mkdir -p data
# Every interface of the container, so that a published port reaches it.
# There the server refuses to start with authentication off
# (INSECURE_LISTEN): run `serve --auth` with a policy and API keys mounted,
# or `serve --insecure` for a trial published on the host's loopback only
# (docs/deployment.md#the-docker-image).
ENV CHRONICLE_LISTEN=0.0.0.0:50051 \
    CHRONICLE_DATABASE_URL=sqlite:///data/chronicle.db
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
    CMD ["chronicle", "health", "--timeout", "3"]
ENTRYPOINT ["chronicle"]
CMD ["serve"]
