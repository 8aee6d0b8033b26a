"""TF Serving configuration messages that the tensorflow-serving-api package does not ship.

`SSLConfig` (--ssl_config_file), `BatchingParameters` (--batching_parameters_file) and `MonitoringConfig`
(--monitoring_config_file) are text protos in TF Serving, but their generated modules are not part of
the PyPI package. Rather than vendor generated code, this module declares the three schemas (same
package, names and field numbers as upstream) in a private descriptor pool and lets protobuf's own
text-format parser read them, so escapes, comments and field order behave exactly as in TF Serving.

Upstream sources: tensorflow_serving/config/ssl_config.proto, config/monitoring_config.proto and
servables/tensorflow/session_bundle_config.proto (BatchingParameters fields 1-7; later additions are
refused as unknown fields with a clear error rather than ignored).
"""

from __future__ import annotations

from typing import Any, Final, TypeVar, cast

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message,
    message_factory,
    text_format,
    wrappers_pb2,
)

from confserve.errors import ConfserveError, Status

__all__ = [
    "BatchingParameters",
    "ConfigFormatError",
    "MonitoringConfig",
    "SSLConfig",
    "format_text",
    "parse_text",
]

_MAX_CONFIG_BYTES: Final = 1 << 20  # a config far larger than any real one is refused, not parsed

_F = descriptor_pb2.FieldDescriptorProto


class ConfigFormatError(ConfserveError):
    """A configuration file that is not a valid text proto of the expected message."""

    status = Status.INVALID_ARGUMENT


def _field(name: str, number: int, kind: int, *, type_name: str = "", repeated: bool = False) -> Any:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    return field


def _build() -> dict[str, type[message.Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="confserve/tfs_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    file.message_type.add(
        name="SSLConfig",
        field=[
            _field("server_key", 1, _F.TYPE_STRING),
            _field("server_cert", 2, _F.TYPE_STRING),
            _field("custom_ca", 3, _F.TYPE_STRING),
            _field("client_verify", 4, _F.TYPE_BOOL),
        ],
    )
    i64, string = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    file.message_type.add(
        name="BatchingParameters",
        field=[
            _field("max_batch_size", 1, _F.TYPE_MESSAGE, type_name=i64),
            _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, type_name=i64),
            _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, type_name=i64),
            _field("num_batch_threads", 4, _F.TYPE_MESSAGE, type_name=i64),
            _field("thread_pool_name", 5, _F.TYPE_MESSAGE, type_name=string),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
        ],
    )
    file.message_type.add(
        name="PrometheusConfig",
        field=[_field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)],
    )
    file.message_type.add(
        name="MonitoringConfig",
        field=[
            _field("prometheus_config", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
        ],
    )
    pool.AddSerializedFile(file.SerializeToString())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("SSLConfig", "BatchingParameters", "MonitoringConfig", "PrometheusConfig")
    }


_CLASSES = _build()
SSLConfig: Final[type[message.Message]] = _CLASSES["SSLConfig"]
BatchingParameters: Final[type[message.Message]] = _CLASSES["BatchingParameters"]
MonitoringConfig: Final[type[message.Message]] = _CLASSES["MonitoringConfig"]

M = TypeVar("M", bound=message.Message)


def parse_text(cls: type[M], data: bytes | str, *, what: str) -> M:
    """Parse a text proto of `cls`; any problem is a ConfigFormatError naming `what`, never its contents."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigFormatError(f"{what} is {len(raw)} bytes, more than the {_MAX_CONFIG_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
        return cast(M, text_format.Parse(text, cls()))
    except UnicodeDecodeError:
        raise ConfigFormatError(f"{what} is not UTF-8 text") from None
    except text_format.ParseError as e:
        # The parser's message names a line, a column and a field, never a value.
        raise ConfigFormatError(
            f"{what} is not a valid {cls.DESCRIPTOR.name} text proto: {_position(e)}"
        ) from None


def _position(e: text_format.ParseError) -> str:
    line, column = e.GetLine(), e.GetColumn()
    where = f"line {line}, column {column}" if line is not None else "syntax error"
    detail = str(e).split(":", 2)[-1].strip() if line is not None else ""
    if "has no field named" in detail:
        # Field names come from the schema or are identifiers the parser read; name the unknown one.
        detail = "unknown field " + detail.rsplit("named", 1)[-1].strip(" \"'.")[:64]
    elif '"' in detail or "'" in detail:
        # A quoted token could be part of a key or certificate: drop it.
        detail = detail.split('"')[0].split("'")[0].strip()
    return f"{where}: {detail}" if detail else where


def format_text(msg: Any) -> str:
    """The text-proto form of `msg`, as TF Serving writes and reads it."""
    return cast(str, text_format.MessageToString(msg))
