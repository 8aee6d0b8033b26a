# confserve's secret-provisioning (key release) service. It needs no model runtime, so TensorFlow and
# the serving stack are left out: confserve is installed without dependencies plus the subset the
# `confserve secret-prov` commands import, at the versions pyproject.toml pins (a test checks both).
# Build from the repository root:  docker build -f deploy/docker/secret-prov.Dockerfile -t confserve-secret-prov .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-compile --no-deps . \
    && pip install --no-compile \
        cryptography==48.0.0 \
        click==8.3.1 \
        dcap-qvl==0.7.0 \
        cbor2==6.2.1 \
        pyOpenSSL==26.2.0 \
        prometheus-client==0.26.0 \
        protobuf==7.36.2 \
        numpy==2.4.6 \
    && rm -rf /build

RUN useradd --uid 10002 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve
WORKDIR /var/lib/confserve
USER 10002:10002
EXPOSE 4433 9433
ENTRYPOINT ["confserve"]
CMD ["secret-prov", "serve", "--help"]
