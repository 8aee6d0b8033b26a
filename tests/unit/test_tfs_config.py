"""The TF Serving config messages declared by confserve read TF Serving's text files, and bad files give
clear errors that never repeat the file's contents (ssl.cfg holds a private key)."""

from __future__ import annotations

import pytest

from confserve.tfs_config import (
    BatchingParameters,
    ConfigFormatError,
    MonitoringConfig,
    SSLConfig,
    format_text,
    parse_text,
)


def test_reference_style_ssl_config() -> None:
    # As the reference's generate_twoway_ssl_config.sh writes it: single quotes, \n escapes, one line bodies.
    text = (
        "server_key: '-----BEGIN PRIVATE KEY-----\\nMIGHAgEA-----END PRIVATE KEY-----'\n"
        "server_cert: '-----BEGIN CERTIFICATE-----\\nMIIB-----END CERTIFICATE-----'\n"
        "custom_ca: ''\n"
        "client_verify: false\n"
    )
    config = parse_text(SSLConfig, text, what="ssl.cfg")
    assert config.server_key.startswith("-----BEGIN PRIVATE KEY-----\nMIGHAgEA")
    assert config.client_verify is False
    assert parse_text(SSLConfig, format_text(config), what="ssl.cfg") == config


def test_batching_parameters_as_documented() -> None:
    text = b"""
        max_batch_size { value: 128 }
        batch_timeout_micros { value: 0 }
        max_enqueued_batches { value: 1000000 }
        num_batch_threads { value: 8 }
        allowed_batch_sizes: 32
        allowed_batch_sizes: 128
        pad_variable_length_inputs: true
    """
    params = parse_text(BatchingParameters, text, what="batching")
    assert params.max_batch_size.value == 128
    assert params.HasField("batch_timeout_micros")
    assert not params.HasField("thread_pool_name")
    assert list(params.allowed_batch_sizes) == [32, 128]
    assert params.pad_variable_length_inputs


def test_monitoring_config() -> None:
    config = parse_text(
        MonitoringConfig, 'prometheus_config { enable: true path: "/metrics" }', what="monitoring"
    )
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/metrics"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('server_key: "SECRETKEYBYTES" bogus: 1', "unknown field bogus"),
        ('server_key: "SECRETKEYBYTES', "line 1"),
        ("server_key: SECRETKEYBYTES", "line 1"),
        ("client_verify: maybe", "line 1"),
        (b"\xff\xfe", "not UTF-8"),
        (b"#" * (2 << 20), "more than"),
    ],
)
def test_bad_files_never_echo_contents(data: str | bytes, message: str) -> None:
    with pytest.raises(ConfigFormatError, match=message) as info:
        parse_text(SSLConfig, data, what="ssl.cfg")
    assert "SECRETKEYBYTES" not in str(info.value)
    assert str(info.value).startswith("ssl.cfg ")
