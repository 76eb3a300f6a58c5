"""Value codec between the wire (JSON inside ``google.protobuf.Any``) and Python values.

Wire conventions (docs/ARCHITECTURE.md, "Values"):

* Parameters: every ``parameters[k]`` Any carries raw UTF-8 JSON in ``value`` (the type_url is
  informational). ``{"__snakepit_float__": "nan" | "inf" | "-inf"}`` decodes to the float.
  ``binary_parameters[k]`` arrives as ``bytes`` argument ``k``.
* Results: ``result.type_url`` is ``type.googleapis.com/snakepit.<type>`` and ``result.value`` is
  JSON. Unlike upstream Snakepit, nothing is lossy: ints stay ints (any size), ``None`` is
  ``null``, NaN/±inf become the float marker. Values that JSON cannot carry raise a
  ``TypeError``/``ValueError`` whose message names the offending field (``result["a"][2]``), so the
  caller gets a structured error instead of a silently mangled value.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

FLOAT_MARKER = "__snakepit_float__"
RESULT_TYPE_URL_PREFIX = "type.googleapis.com/snakepit."
PARAMETER_TYPE_URL = "type.googleapis.com/google.protobuf.StringValue"

_MARKER_TO_FLOAT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_BYTES_TYPES = (bytes, bytearray, memoryview)
# Hooks tried, in order, on objects JSON does not know (pydantic, pandas, namedtuple-likes,
# numpy, datetime). Their return value is converted recursively.
_CONVERTER_METHODS = ("model_dump", "to_dict", "_asdict", "tolist", "isoformat")
_DEFAULT_TOLIST_MAX_ELEMENTS = 1_000_000
# Ints below 2000 bits (602 digits) are under any int/str digit limit Python allows (>= 640).
_INT_DIGITS_CHECK_BITS = 2_000


class EncodedResult(NamedTuple):
    """A tool result ready for ``ExecuteToolResponse``."""

    type_name: str
    json_bytes: bytes
    binary: bytes


# --------------------------------------------------------------------------------------------
# Decoding (wire -> Python)
# --------------------------------------------------------------------------------------------


def _revive_float_marker(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook turning the non-finite float marker back into a float."""
    if len(obj) == 1 and FLOAT_MARKER in obj:
        tag = obj[FLOAT_MARKER]
        if isinstance(tag, str) and tag in _MARKER_TO_FLOAT:
            return _MARKER_TO_FLOAT[tag]
    return obj


def _reject_json_constant(name: str) -> Any:
    # Plain JSON has no NaN/Infinity literals; the marker is the only accepted spelling.
    raise ValueError(f"non-standard JSON constant {name}")


def decode_json(data: bytes | str) -> Any:
    """Decode one JSON document, honouring the non-finite float marker."""
    return json.loads(
        data,
        object_hook=_revive_float_marker,
        parse_constant=_reject_json_constant,
    )


def decode_parameters(
    parameters: Mapping[str, Any],
    binary_parameters: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Decode ``ExecuteToolRequest.parameters`` (+ ``binary_parameters``) into keyword arguments.

    Args:
        parameters: map of name -> ``google.protobuf.Any`` whose ``value`` is UTF-8 JSON.
        binary_parameters: map of name -> raw bytes; these become ``bytes`` arguments and win
            over a JSON parameter of the same name.

    Raises:
        ValueError: a parameter is not valid UTF-8 JSON (message names the parameter).
    """
    arguments: dict[str, Any] = {}
    for key, any_value in parameters.items():
        try:
            arguments[key] = decode_json(bytes(any_value.value))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"Invalid parameter {key!r} ({any_value.type_url}): {exc}"
            ) from exc
    for key, raw in (binary_parameters or {}).items():
        arguments[key] = bytes(raw)
    return arguments


# --------------------------------------------------------------------------------------------
# Encoding (Python -> wire)
# --------------------------------------------------------------------------------------------


def _tolist_max_elements() -> int:
    try:
        return int(os.environ.get("SNAKEPIT_TOLIST_MAX_ELEMENTS", _DEFAULT_TOLIST_MAX_ELEMENTS))
    except ValueError:
        return _DEFAULT_TOLIST_MAX_ELEMENTS


def _float_to_json(value: float) -> Any:
    if math.isnan(value):
        return {FLOAT_MARKER: "nan"}
    if math.isinf(value):
        return {FLOAT_MARKER: "inf" if value > 0 else "-inf"}
    return float(value)


def _check_utf8(text: str, path: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{path}: string contains a lone surrogate at index {exc.start} "
            "and cannot be encoded as UTF-8"
        ) from None
    return str(text)


def _check_int_digits(value: int, path: str) -> int:
    """``value`` if Python can print it; else an error naming the field.

    Python refuses int -> str conversions beyond ``sys.get_int_max_str_digits()`` digits
    (4300 by default since 3.11 and recent 3.10 patch releases; a guard against quadratic-time
    conversions).
    """
    if value.bit_length() > _INT_DIGITS_CHECK_BITS:
        try:
            str(value)
        except ValueError:
            raise ValueError(
                f"{path}: integer with more than {sys.get_int_max_str_digits()} digits cannot "
                "be encoded (Python's int max_str_digits limit); return it as a string"
            ) from None
    return value


def _key_to_str(key: Any, path: str) -> str:
    """Stringify a dict key the way ``json.dumps`` does, extended to any key type."""
    if isinstance(key, str):
        return _check_utf8(key, f"{path} (key {key!r})")
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        return repr(float(key))
    return _check_utf8(str(key), f"{path} (key {key!r})")


def _type_label(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class _Converter:
    """Walks a value and returns a structure ``json.dumps`` can encode losslessly."""

    def __init__(self) -> None:
        self._active: set[int] = set()  # ids of containers on the current path (cycle check)
        self._tolist_max = _tolist_max_elements()

    def convert(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return _check_int_digits(int(value), path)  # IntEnum & co. become plain ints
        if isinstance(value, float):
            return _float_to_json(value)
        if isinstance(value, str):
            return _check_utf8(value, path)
        if isinstance(value, _BYTES_TYPES):
            raise TypeError(
                f"{path}: bytes cannot be encoded as JSON; return bytes only as the whole "
                "result (sent as binary_result) or as (bytes, dict), or encode them (e.g. base64)"
            )
        if isinstance(value, Mapping):
            return self._container(
                value,
                path,
                lambda: {
                    _key_to_str(k, path): self.convert(v, f"{path}[{json.dumps(str(k))}]")
                    for k, v in value.items()
                },
            )
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._container(
                value,
                path,
                lambda: [self.convert(item, f"{path}[{i}]") for i, item in enumerate(value)],
            )
        return self._convert_object(value, path)

    def _container(self, value: Any, path: str, build: Any) -> Any:
        marker = id(value)
        if marker in self._active:
            raise ValueError(f"{path}: circular reference")
        self._active.add(marker)
        try:
            return build()
        finally:
            self._active.discard(marker)

    def _convert_object(self, value: Any, path: str) -> Any:
        for name in _CONVERTER_METHODS:
            method = getattr(value, name, None)
            if not callable(method):
                continue
            if name == "tolist":
                size = getattr(value, "size", None)
                if isinstance(size, int) and size > self._tolist_max:
                    raise TypeError(
                        f"{path}: {_type_label(value)} has {size} elements, more than "
                        f"SNAKEPIT_TOLIST_MAX_ELEMENTS={self._tolist_max}"
                    )
            converted = method()
            if converted is value:
                break
            return self._container(value, path, lambda: self.convert(converted, path))
        raise TypeError(f"{path}: object of type {_type_label(value)} is not JSON serializable")


def _raise_unserializable(value: Any) -> Any:
    # Makes the C encoder give up on unknown objects so the converter handles them.
    raise TypeError("not plain JSON")


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def _dump_fast(value: Any) -> bytes:
    return json.dumps(
        value,
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        default=_raise_unserializable,
    ).encode("utf-8")


def to_json_value(value: Any, path: str = "result") -> Any:
    """Return ``value`` as plain JSON-compatible data (see module docstring for the rules).

    Raises:
        TypeError: a value JSON cannot carry (nested bytes, unknown objects); names the path.
        ValueError: a string with lone surrogates or a circular reference; names the path.
    """
    return _Converter().convert(value, path)


def encode_json(value: Any, path: str = "result") -> bytes:
    """Encode ``value`` as UTF-8 JSON bytes.

    The C encoder handles the common case; anything it rejects (NaN, sets, custom objects,
    surrogates, ...) goes through the converter, which either fixes it up or raises an error
    naming the field.
    """
    try:
        return _dump_fast(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    # Outside the except block: an error of the converter must not be chained to the fast
    # path's internal one (the caller's traceback would show both).
    return _dump(to_json_value(value, path))


def json_type_name(value: Any) -> str:
    """Name used in ``type.googleapis.com/snakepit.<type>`` for an already converted value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "float" if len(value) == 1 and FLOAT_MARKER in value else "dict"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "list"
    return "object"


def encode_result(value: Any) -> EncodedResult:
    """Encode a tool's return value for ``ExecuteToolResponse``.

    * ``bytes``-like → result ``null`` + ``binary_result``;
    * ``(bytes, dict)`` → ``binary_result`` + the dict as result;
    * anything else → JSON result, empty ``binary_result``.
    """
    if isinstance(value, _BYTES_TYPES):
        return EncodedResult("null", b"null", bytes(value))
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], _BYTES_TYPES)
        and isinstance(value[1], Mapping)
    ):
        meta = value[1]
        return EncodedResult("dict", encode_json(meta, "result[1]"), bytes(value[0]))
    try:
        return EncodedResult(json_type_name(value), _dump_fast(value), b"")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    converted = to_json_value(value, "result")  # not chained to the fast path's error
    return EncodedResult(json_type_name(converted), _dump(converted), b"")


def encode_chunk_data(item: Any, path: str = "chunk") -> bytes:
    """Payload bytes of one stream chunk: raw for bytes, empty for ``None``, JSON otherwise."""
    if item is None:
        return b""
    if isinstance(item, _BYTES_TYPES):
        return bytes(item)
    return encode_json(item, path)
