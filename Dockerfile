# One small image for every component: the entrypoint is `whm-ha` (operator, proxy, shim, sandbox, ...).
# Built by the kind end-to-end suite (make e2e-kind) from the default base, and by hack/build-images for the
# local cluster (no Docker engine, no registry) with --build-arg BASE_IMAGE=localhost/whm-ha-base:bookworm: a
# debootstrap'ed bookworm whose `python`/`pip` are those of a venv at /opt/venv, first on PATH.
# Every Python dependency installs from a wheel (no compiler). The backup Jobs, the binlog archiver and restores
# run mariadb, mariadb-dump and mariadb-binlog (Debian's mariadb-client): the local cluster's base has them, another
# base gets them from apt.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY proxy ./proxy
COPY sql ./sql
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
RUN command -v mariadb-binlog >/dev/null || { apt-get update && apt-get install -y --no-install-recommends \
    mariadb-client && rm -rf /var/lib/apt/lists/*; }
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin whm-ha
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["whm-ha"]
CMD ["--help"]
