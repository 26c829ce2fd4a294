# syntax=docker/dockerfile:1
# Handoff container image.
#   docker build -t handoff .
#   docker run --read-only --tmpfs /tmp -p 8000:8000 handoff
# The builder stage installs the project (runtime dependencies only, no [test] extra) into a
# virtualenv (migrations included); the runtime stage copies that virtualenv and nothing else.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The venv has no pip of its own: the builder's pip installs into it with --python, so the
# runtime image carries no package installer.
RUN python -m venv --without-pip /opt/venv
COPY pyproject.toml README.md ./
COPY service/ service/
# The Alembic scripts are a package of the project (``migrations``), so `handoff migrate`
# finds them in site-packages whatever the working directory.
COPY migrations/ migrations/
# Bytecode is compiled here because the runtime root filesystem is read-only.
RUN pip --python /opt/venv/bin/python install --no-compile . \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="handoff" \
      org.opencontainers.image.description="FHIR R4 warm-handoff service" \
      org.opencontainers.image.licenses="Apache-2.0"
# Fixed ids so Kubernetes runAsUser/fsGroup (10001) match the image.
RUN groupadd --system --gid 10001 handoff \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin handoff
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HANDOFF_DATABASE_URL=sqlite+aiosqlite:////tmp/handoff.db
# ^ only /tmp is writable; production overrides the URL with PostgreSQL (Helm: from a Secret).
COPY --from=builder /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: probe /healthz with the interpreter that runs the service.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('HANDOFF_HEALTHCHECK_URL', 'http://127.0.0.1:8000/healthz'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["handoff"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
