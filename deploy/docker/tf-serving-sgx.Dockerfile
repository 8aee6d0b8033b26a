# The reference's arrangement, fixed: the real tensorflow_model_server under Gramine-SGX with Gramine's
# libsecret_prov_attest.so getting the key from confserve's secret-provisioning service; the whole model
# directory and ssl.cfg are encrypted mounts; arguments are fixed in the manifest; REST (plaintext in TF
# Serving) is off. Build from the repository root with BuildKit:
#
#   docker buildx build -f deploy/docker/tf-serving-sgx.Dockerfile --build-context owner=OWNER_DIR \
#       --secret id=enclave-key,src=enclave-key.pem --build-arg MODEL_NAME=resnet50-v15-fp32 \
#       --build-arg MODEL_SIZE=110M -t confserve-tf-serving-sgx .

# Stage 1: render the manifest template with confserve (not part of the final image).
FROM python:3.11.14-slim-bookworm AS render
ARG MODEL_NAME=resnet50-v15-fp32
ARG MODEL_BIND_ROOT=models/${MODEL_NAME}
ARG MODEL_SIZE=110M
ARG ISV_PROD_ID=1
ARG ISV_SVN=1
ARG SECRET_PROV_SERVERS=secret-prov.confserve.svc.cluster.local:4433
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-compile . \
    && confserve render gramine --variant tf-serving --model-name "${MODEL_NAME}" \
        --model-bind-root "${MODEL_BIND_ROOT}" --model-size "${MODEL_SIZE}" \
        --secret-prov-servers "${SECRET_PROV_SERVERS}" --secret-prov-ca /etc/confserve/secret-prov-ca.crt \
        --isv-prod-id "${ISV_PROD_ID}" --isv-svn "${ISV_SVN}" --out /tensorflow_model_server.manifest.template

# Stage 2: Gramine, TF Serving and the signed manifest.
FROM debian:12.12-slim
ARG GRAMINE_VERSION=1.9
ARG TF_SERVING_VERSION=2.18.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && curl -fsSLo /etc/apt/keyrings/gramine-keyring-bookworm.gpg \
        https://packages.gramineproject.io/gramine-keyring-bookworm.gpg \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg] https://packages.gramineproject.io/ bookworm main" \
        > /etc/apt/sources.list.d/gramine.list \
    && curl -fsSLo /etc/apt/keyrings/intel-sgx-deb.asc https://download.01.org/intel-sgx/sgx_repo/ubuntu/intel-sgx-deb.key \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/intel-sgx-deb.asc] https://download.01.org/intel-sgx/sgx_repo/ubuntu jammy main" \
        > /etc/apt/sources.list.d/intel-sgx.list \
    && curl -fsSLo /etc/apt/keyrings/tensorflow-serving.asc \
        https://storage.googleapis.com/tensorflow-serving-apt/tensorflow-serving.release.pub.gpg \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/tensorflow-serving.asc] http://storage.googleapis.com/tensorflow-serving-apt stable tensorflow-model-server tensorflow-model-server-universal" \
        > /etc/apt/sources.list.d/tensorflow-serving.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "gramine=${GRAMINE_VERSION}*" \
        "tensorflow-model-server=${TF_SERVING_VERSION}" \
        sgx-aesm-service libsgx-aesm-ecdsa-plugin libsgx-aesm-quote-ex-plugin libsgx-dcap-default-qpl \
    && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

COPY --from=owner ca.crt /etc/confserve/secret-prov-ca.crt
WORKDIR /opt/confserve/enclave
COPY --from=render /tensorflow_model_server.manifest.template ./
RUN gramine-manifest tensorflow_model_server.manifest.template tensorflow_model_server.manifest
RUN --mount=type=secret,id=enclave-key,required=true \
    gramine-sgx-sign --key /run/secrets/enclave-key --manifest tensorflow_model_server.manifest \
        --output tensorflow_model_server.manifest.sgx

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve
WORKDIR /srv/confserve
USER 10001:10001
EXPOSE 8500
ENTRYPOINT ["gramine-sgx", "/opt/confserve/enclave/tensorflow_model_server"]
