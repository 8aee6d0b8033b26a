"""Running confserve: the local multi-process cluster and rendering of nginx, Kubernetes and Gramine files."""

from confserve.cluster._nginx import (
    NginxConfig,
    NginxError,
    NginxProcess,
    find_nginx,
    find_stream_module,
    render_nginx,
)

__all__ = ["NginxConfig", "NginxError", "NginxProcess", "find_nginx", "find_stream_module", "render_nginx"]
