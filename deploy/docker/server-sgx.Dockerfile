# confserve model server under Gramine-SGX (the "confserve" manifest variant), plus Intel's AESM service
# (run as a sidecar from the same image). Build from the repository root with BuildKit:
#
#   docker buildx build -f deploy/docker/server-sgx.Dockerfile \
#       --build-context owner=OWNER_DIR \                  # OWNER_DIR/ca.crt: the key service's CA,
#                                                         # OWNER_DIR/release.pub.pem: the release key
#       --secret id=enclave-key,src=enclave-key.pem \     # RSA-3072, e = 3; never stored in a layer
#       --build-arg MODEL_NAME=digits --build-arg MODEL_SIZE=200M \
#       -t confserve-server-sgx .
#
# The measurement is printed at the end of the build and kept in /opt/confserve/enclave/measurement.json
# for reference only: the owner rebuilds the same commit and runs `confserve measure --sigstruct` on their
# own build (docs/deployment.md), never trusting a value read from this image.
FROM python:3.11.14-slim-bookworm

ARG GRAMINE_VERSION=1.9
ARG MODEL_NAME=digits
ARG MODEL_BIND_ROOT=models/${MODEL_NAME}
ARG MODEL_SIZE=200M
ARG ISV_PROD_ID=1
ARG ISV_SVN=1
ARG SECRET_PROV_SERVERS=secret-prov.confserve.svc.cluster.local:4433

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Gramine and Intel SGX DCAP from their signed apt repositories (Gramine's instructions for Debian 12).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && curl -fsSLo /etc/apt/keyrings/gramine-keyring-bookworm.gpg \
        https://packages.gramineproject.io/gramine-keyring-bookworm.gpg \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg] https://packages.gramineproject.io/ bookworm main" \
        > /etc/apt/sources.list.d/gramine.list \
    && curl -fsSLo /etc/apt/keyrings/intel-sgx-deb.asc https://download.01.org/intel-sgx/sgx_repo/ubuntu/intel-sgx-deb.key \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/intel-sgx-deb.asc] https://download.01.org/intel-sgx/sgx_repo/ubuntu jammy main" \
        > /etc/apt/sources.list.d/intel-sgx.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "gramine=${GRAMINE_VERSION}*" \
        sgx-aesm-service libsgx-aesm-ecdsa-plugin libsgx-aesm-quote-ex-plugin libsgx-dcap-default-qpl \
    && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-compile . \
    && python -m compileall -q --invalidation-mode unchecked-hash /usr/local/lib/python3.11/site-packages \
    && rm -rf /build

# The key service's CA: a trusted file of the enclave, so it is measured (the host cannot swap it).
COPY --from=owner ca.crt /etc/confserve/secret-prov-ca.crt
# The owner's release public key (`confserve release gen-key`), also a trusted file: the server serves
# only what a signed release lists, at or above the key service's floor (docs/releases.md).
COPY --from=owner release.pub.pem /etc/confserve/release.pub.pem

WORKDIR /opt/confserve/enclave
RUN confserve render gramine --variant confserve --model-name "${MODEL_NAME}" \
        --model-bind-root "${MODEL_BIND_ROOT}" --model-size "${MODEL_SIZE}" \
        --secret-prov-servers "${SECRET_PROV_SERVERS}" --secret-prov-ca /etc/confserve/secret-prov-ca.crt \
        --release-public-key /etc/confserve/release.pub.pem \
        --isv-prod-id "${ISV_PROD_ID}" --isv-svn "${ISV_SVN}" --out confserve.manifest.template \
    && gramine-manifest confserve.manifest.template confserve.manifest
RUN --mount=type=secret,id=enclave-key,required=true \
    gramine-sgx-sign --key /run/secrets/enclave-key --manifest confserve.manifest \
        --output confserve.manifest.sgx \
    && confserve measure --sigstruct confserve.sig --json | tee measurement.json

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve
# Gramine's host directory: models/ and ssl.cfg are mounted here and bound relative to it.
WORKDIR /srv/confserve
USER 10001:10001
EXPOSE 8500 8501
ENTRYPOINT ["gramine-sgx", "/opt/confserve/enclave/confserve"]
