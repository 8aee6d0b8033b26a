# The load balancer of the simulated cluster in containers (scripts/container-cluster): nginx's stream
# module in TLS passthrough, standing in for ingress-nginx with ssl-passthrough. It holds no key and
# sees only ciphertext; its configuration (rendered by confserve from the Ingress, Service and
# Deployment objects) is mounted at /etc/confserve-lb/nginx.conf when it runs.
#
# The base is an argument: the official nginx image by default (stream module built in), or Debian's
# nginx-light with libnginx-mod-stream (scripts/make-base-image). Built by scripts/build-images.
ARG BASE_IMAGE=nginx:1.28.0-bookworm
FROM ${BASE_IMAGE}

RUN useradd --uid 10004 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin confserve-lb
WORKDIR /tmp
USER 10004:10004
EXPOSE 8443 8444
ENTRYPOINT ["nginx", "-e", "stderr", "-g", "daemon off;", "-c", "/etc/confserve-lb/nginx.conf"]
