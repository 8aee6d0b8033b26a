# confserve model server, simulated enclave (development, CI, clusters without SGX).
# Build from the repository root:  docker build -f deploy/docker/server.Dockerfile -t confserve-server .
# Base pinned by exact tag; pin by digest in production (docker buildx imagetools inspect <tag>).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# Runtime dependencies are pinned exactly in pyproject.toml. No bytecode is written at install time;
# it is compiled with content hashes (not mtimes) so two builds give identical files.
RUN pip install --no-compile . \
    && python -m compileall -q --invalidation-mode unchecked-hash /usr/local/lib/python3.11/site-packages \
    && rm -rf /build

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve
WORKDIR /srv/confserve
USER 10001:10001
EXPOSE 8500 8501
ENTRYPOINT ["confserve"]
CMD ["serve", "--help"]
