"""Model-owner tools: TLS material, example models, encryption of model trees."""

from confserve.owner._tls import KeyType, TlsMaterial, TlsMaterialError, generate_tls_material

__all__ = ["KeyType", "TlsMaterial", "TlsMaterialError", "generate_tls_material"]
