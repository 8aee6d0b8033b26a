"""confserve: confidential, TensorFlow-Serving-compatible model serving.

Models stay encrypted (Gramine protected files) on untrusted machines and are decrypted only inside an
enclave that proved its identity by remote attestation. See README.md for the overview.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
