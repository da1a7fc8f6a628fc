# syntax=docker/dockerfile:1
# Chronicle server image: build wheels in one stage, run them as a non-root
# user in a slim one. The same steps run in CI in a plain venv
# (tools/check_dockerfile_steps.sh), since no Docker engine runs there.
# For builds that do not change under you, pin both FROMs by digest
# (python:3.11-slim@sha256:…; `docker buildx imagetools inspect
# python:3.11-slim` prints it): docs/deployment.md#the-docker-image.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CONSTRAINT=/src/constraints.txt
# The dependencies' wheels first, in a layer of their own built from
# pyproject.toml and constraints.txt alone: a change to Chronicle's code
# leaves it cached.
COPY pyproject.toml constraints.txt ./
COPY tools/dependencies.py tools/dependencies.py
RUN python tools/dependencies.py pyproject.toml >/tmp/dependencies.txt \
    && pip wheel --wheel-dir /wheels -r /tmp/dependencies.txt
# Then Chronicle's own wheel (its dependencies are in /wheels already).
COPY README.md ./
COPY tools tools
COPY protos protos
COPY service service
COPY domain_plugins domain_plugins
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/chronicle chronicle
# The wheels are mounted from the build stage for this step only, so no
# layer of the image holds them. What was installed is written down as
# constraints, and PIP_CONSTRAINT (below) holds later installs to it: an
# image FROM this one that installs its domains (docs/deployment.md) keeps
# the grpcio and protobuf Chronicle was built and tested with, or fails
# saying which requirement conflicts, instead of upgrading them silently.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels chronicle \
    && mkdir -p /etc/chronicle \
    && pip freeze --exclude chronicle >/etc/chronicle/constraints.txt
USER chronicle
WORKDIR /var/lib/chronicle
# Owned by the runtime user, so a volume mounted here starts writable.
RUN mkdir -p data
# Every interface of the container, so that a published port reaches it.
# There the server refuses to start with authentication off
# (INSECURE_LISTEN): run `serve --auth` with a policy and API keys mounted,
# or `serve --insecure` for a trial published on the host's loopback only
# (docs/deployment.md#the-docker-image). The example plugins (bank_account,
# box, users) are not served: only the domains installed on top, or named
# with --plugin (CHRONICLE_EXAMPLE_PLUGINS=true serves the examples).
ENV CHRONICLE_LISTEN=0.0.0.0:50051 \
    CHRONICLE_DATABASE_URL=sqlite:///data/chronicle.db \
    CHRONICLE_EXAMPLE_PLUGINS=false \
    PIP_CONSTRAINT=/etc/chronicle/constraints.txt
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
    CMD ["chronicle", "health", "--timeout", "3"]
ENTRYPOINT ["chronicle"]
CMD ["serve"]
