"""Model-owner tools: TLS material, example models, encryption and inspection of model trees, releases
(publishing and key rotation).

Importing the package loads nothing else: TLS material (cryptography's X.509 layer) and models
(TensorFlow) load on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports

if TYPE_CHECKING:
    from confserve.owner._models import (
        DigitsModel,
        ModelError,
        SignatureInfo,
        VersionInfo,
        encrypt_model_tree,
        import_frozen_graph,
        inspect_model_tree,
        load_digits_dataset,
        make_digits_model,
        make_resnet50_model,
    )
    from confserve.owner._releases import current_release, publish_release, rotate_key
    from confserve.owner._tls import (
        DEFAULT_SSL_CONFIG_BOUND_PATH,
        SERVER_NAME_FILE,
        KeyType,
        TlsMaterial,
        TlsMaterialError,
        generate_tls_material,
        key_service_pki,
    )

# Where each lazily imported name lives: the module is imported on first use.
_LAZY: dict[str, str] = {
    "DigitsModel": "_models",
    "ModelError": "_models",
    "SignatureInfo": "_models",
    "VersionInfo": "_models",
    "encrypt_model_tree": "_models",
    "import_frozen_graph": "_models",
    "inspect_model_tree": "_models",
    "load_digits_dataset": "_models",
    "make_digits_model": "_models",
    "make_resnet50_model": "_models",
    "current_release": "_releases",
    "publish_release": "_releases",
    "rotate_key": "_releases",
    "DEFAULT_SSL_CONFIG_BOUND_PATH": "_tls",
    "KeyType": "_tls",
    "SERVER_NAME_FILE": "_tls",
    "TlsMaterial": "_tls",
    "TlsMaterialError": "_tls",
    "generate_tls_material": "_tls",
    "key_service_pki": "_tls",
}

__all__ = [
    "DEFAULT_SSL_CONFIG_BOUND_PATH",
    "SERVER_NAME_FILE",
    "DigitsModel",
    "KeyType",
    "ModelError",
    "SignatureInfo",
    "TlsMaterial",
    "TlsMaterialError",
    "VersionInfo",
    "current_release",
    "encrypt_model_tree",
    "generate_tls_material",
    "import_frozen_graph",
    "inspect_model_tree",
    "key_service_pki",
    "load_digits_dataset",
    "make_digits_model",
    "make_resnet50_model",
    "publish_release",
    "rotate_key",
]


__getattr__ = lazy_exports(__name__, _LAZY)
