# confserve's client tools (`confserve predict`, `bench-client`, `tls`): any TF Serving client works
# against the server too; this image is for the users' side. It holds no TensorFlow runtime: the client
# reads TF Serving's protos without it (confserve.tfs_protos), and of the `tensorflow` wheel only the
# generated proto modules (`*_pb2.py`, with their packages' `__init__.py`) are kept: about 130 small
# Python files instead of 1.9 GB of libraries. `import tensorflow` fails in this image, by design.
#
# Built by scripts/build-images, or by hand from the repository root (WHEELHOUSE: scripts/make-wheelhouse):
#   docker build -f deploy/docker/client.Dockerfile --build-context wheels=WHEELHOUSE -t confserve-client .
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/confserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The pins are pyproject.toml's (a test checks); ml-dtypes (bfloat16 signatures only) is not pinned there:
# it is the version the wheelhouse resolved for TensorFlow. Of the tensorflow wheel (installed without its
# dependencies) only the generated proto modules stay.
# WHEELHOUSE: the wheelhouse's name; it changes with the pinned versions, and so rebuilds this layer.
ARG WHEELHOUSE=unset
RUN --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv --without-pip /opt/confserve \
    && /opt/confserve/bin/python "$(echo /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
        --no-compile --no-cache-dir --disable-pip-version-check --quiet --no-deps \
        tensorflow==2.21.0 \
        tensorflow-serving-api==2.21.0 \
    && /opt/confserve/bin/python "$(echo /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
        --no-compile --no-cache-dir --disable-pip-version-check --quiet \
        cryptography==48.0.0 \
        click==8.3.1 \
        dcap-qvl==0.7.0 \
        cbor2==6.2.1 \
        pyOpenSSL==26.2.0 \
        grpcio==1.85.3 \
        protobuf==7.36.2 \
        numpy==2.4.6 \
        pillow==13.0.0 \
        ml-dtypes \
    && find /opt/confserve/lib/python3.11/site-packages/tensorflow -type f \
        ! -name "*_pb2.py" ! -name "__init__.py" -delete \
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

RUN useradd --uid 10003 --user-group --create-home --home-dir /home/confserve --shell /usr/sbin/nologin confserve
WORKDIR /home/confserve
USER 10003:10003
ENTRYPOINT ["confserve"]
CMD ["predict", "--help"]
