# confserve's client tools (`confserve predict`, `bench-client`, `tls`, `model`): any TF Serving client
# works against the server too; this image is for the owner's and users' side.
# Build from the repository root:  docker build -f deploy/docker/client.Dockerfile -t confserve-client .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-compile . && rm -rf /build

RUN useradd --uid 10003 --user-group --create-home --home-dir /home/confserve --shell /usr/sbin/nologin confserve
WORKDIR /home/confserve
USER 10003:10003
ENTRYPOINT ["confserve"]
CMD ["predict", "--help"]
