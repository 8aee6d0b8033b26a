# confserve's secret-provisioning (key release) service. It needs no model runtime, so TensorFlow and
# the serving stack are left out: confserve is installed without dependencies plus the subset the
# `confserve secret-prov` commands import, at the versions pyproject.toml pins (a test checks both).
#
# Built by scripts/build-images, or by hand from the repository root (WHEELHOUSE: scripts/make-wheelhouse):
#   docker build -f deploy/docker/secret-prov.Dockerfile --build-context wheels=WHEELHOUSE -t confserve-secret-prov .
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/confserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The pins are pyproject.toml's (a test checks).
# WHEELHOUSE: the wheelhouse's name; it changes with the pinned versions, and so rebuilds this layer.
ARG WHEELHOUSE=unset
RUN --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv --without-pip /opt/confserve \
    && /opt/confserve/bin/python "$(echo /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
        --no-compile --no-cache-dir --disable-pip-version-check --quiet \
        cryptography==48.0.0 \
        click==8.3.1 \
        dcap-qvl==0.7.0 \
        cbor2==6.2.1 \
        pyOpenSSL==26.2.0 \
        prometheus-client==0.26.0 \
        protobuf==7.36.2 \
        numpy==2.4.6 \
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

RUN useradd --uid 10002 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve \
    && install -d -o 10002 -g 10002 -m 0700 /var/lib/confserve /var/lib/confserve/audit
# /var/lib/confserve/audit: the audit log's volume; an empty volume mounted here takes this owner.
WORKDIR /var/lib/confserve
USER 10002:10002
EXPOSE 4433 9433
ENTRYPOINT ["confserve"]
CMD ["secret-prov", "serve", "--help"]
