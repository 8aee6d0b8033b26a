# confserve model server, simulated enclave (development, CI, clusters without SGX).
#
# Built by scripts/build-images (which makes the wheelhouse and, where no registry is reachable, a Debian
# base), or by hand from the repository root:
#   docker build -f deploy/docker/server.Dockerfile --build-context wheels=WHEELHOUSE -t confserve-server .
# WHEELHOUSE holds the pinned dependencies as wheels (scripts/make-wheelhouse): the build installs only
# from it and needs no network (scripts/build-images passes --network none).
# The base is an argument: the official Python image by default (pin it by digest in production), or a
# Debian base with python3 made from Debian's packages (scripts/make-base-image).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/confserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# A venv at /opt/confserve, the same on every base, filled from the wheelhouse with the pip wheel in it
# (so no pip is left in the image). Two layers: the pinned dependencies (dependencies.txt, which
# scripts/make-wheelhouse writes from pyproject.toml), then confserve itself. WHEELHOUSE is the
# wheelhouse's name, which changes with the pinned versions: a RUN after an ARG is rebuilt when its value
# changes, so a cached layer never holds other versions than the wheelhouse. Bytecode is compiled with
# content hashes (not mtimes), so two builds give identical files: the installed code is part of the
# simulated enclave's measurement.
ARG WHEELHOUSE=unset
RUN --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv --without-pip /opt/confserve \
    && /opt/confserve/bin/python "$(echo /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
        --no-compile --no-cache-dir --disable-pip-version-check --quiet -r /wheels/dependencies.txt \
    && /opt/confserve/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/confserve/lib
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=bind,from=wheels,target=/wheels \
    /opt/confserve/bin/python "$(echo /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
        --no-compile --no-cache-dir --disable-pip-version-check --quiet --no-deps . \
    && /opt/confserve/bin/python -m compileall -q --invalidation-mode unchecked-hash \
        /opt/confserve/lib/python3.11/site-packages/confserve \
    && cd / && rm -rf /build

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve
WORKDIR /srv/confserve
USER 10001:10001
EXPOSE 8500 8501
ENTRYPOINT ["confserve"]
CMD ["serve", "--help"]
