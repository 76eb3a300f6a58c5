"""Value codec: wire JSON <-> Python, lossless for what JSON can carry, loud for the rest."""

from __future__ import annotations

import collections
import datetime
import json
import math
import sys
import traceback

import pytest
from google.protobuf import any_pb2

from snakepit_bridge import codec


def _any(raw: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=codec.PARAMETER_TYPE_URL, value=raw)


def _result(value):
    encoded = codec.encode_result(value)
    return encoded.type_name, json.loads(encoded.json_bytes), encoded.binary


class TestDecode:
    def test_parameters_decode_json_and_binary(self):
        args = codec.decode_parameters(
            {"a": _any(b'{"x":[1,2.5,true,null,"\xc3\xa9"]}'), "big": _any(b"123456789012345678901234567890")},
            {"blob": b"\x00\xff"},
        )
        assert args == {
            "a": {"x": [1, 2.5, True, None, "é"]},
            "big": 123456789012345678901234567890,
            "blob": b"\x00\xff",
        }
        assert isinstance(args["big"], int)

    def test_float_markers(self):
        value = codec.decode_json(
            b'[{"__snakepit_float__":"nan"},{"__snakepit_float__":"inf"},{"__snakepit_float__":"-inf"}]'
        )
        assert math.isnan(value[0]) and value[1] == math.inf and value[2] == -math.inf

    def test_marker_lookalikes_stay_maps(self):
        assert codec.decode_json(b'{"__snakepit_float__":"nan","x":1}') == {
            "__snakepit_float__": "nan",
            "x": 1,
        }
        assert codec.decode_json(b'{"__snakepit_float__":"huge"}') == {"__snakepit_float__": "huge"}

    def test_invalid_parameter_names_the_key(self):
        with pytest.raises(ValueError, match="Invalid parameter 'bad'"):
            codec.decode_parameters({"bad": _any(b"{nope")})
        with pytest.raises(ValueError, match="Invalid parameter 'nan'"):
            codec.decode_parameters({"nan": _any(b"NaN")})


class TestEncode:
    @pytest.mark.parametrize(
        ("value", "type_name"),
        [
            (None, "null"),
            (True, "bool"),
            (2**80, "int"),
            (1.5, "float"),
            ("s", "str"),
            ([1], "list"),
            ({"a": 1}, "dict"),
            ((1, 2), "list"),
        ],
    )
    def test_type_names(self, value, type_name):
        assert codec.encode_result(value).type_name == type_name

    def test_ints_and_none_are_not_mangled(self):
        assert _result(4) == ("int", 4, b"")
        assert _result(None) == ("null", None, b"")
        assert _result(2**70)[1] == 2**70

    def test_non_finite_floats_use_the_marker_anywhere(self):
        type_name, value, _ = _result({"a": [math.nan, math.inf, -math.inf, 1.0]})
        assert type_name == "dict"
        assert value == {
            "a": [
                {"__snakepit_float__": "nan"},
                {"__snakepit_float__": "inf"},
                {"__snakepit_float__": "-inf"},
                1.0,
            ]
        }
        assert _result(math.nan)[:2] == ("float", {"__snakepit_float__": "nan"})

    def test_containers_and_keys(self):
        _, value, _ = _result({2: (1, 2), None: {3}, False: frozenset(), 1.5: "x"})
        assert value == {"2": [1, 2], "null": [3], "false": [], "1.5": "x"}

    def test_converter_hooks(self):
        Point = collections.namedtuple("Point", "x y")

        class Model:
            def model_dump(self):
                return {"when": datetime.date(2024, 1, 2), "p": Point(1, 2)}

        class Scalar:
            def tolist(self):
                return 7

        _, value, _ = _result({"m": Model(), "s": Scalar()})
        assert value == {"m": {"when": "2024-01-02", "p": [1, 2]}, "s": 7}

    def test_tolist_size_guard(self, monkeypatch):
        monkeypatch.setenv("SNAKEPIT_TOLIST_MAX_ELEMENTS", "3")

        class Big:
            size = 10

            def tolist(self):
                return list(range(10))

        with pytest.raises(TypeError, match="SNAKEPIT_TOLIST_MAX_ELEMENTS=3"):
            codec.encode_result({"arr": Big()})

    def test_top_level_bytes_go_to_binary_result(self):
        assert _result(b"\x00\x01") == ("null", None, b"\x00\x01")
        assert _result(bytearray(b"ab"))[2] == b"ab"
        assert _result((b"\xff", {"size": 1})) == ("dict", {"size": 1}, b"\xff")

    def test_nested_bytes_name_the_field(self):
        with pytest.raises(TypeError, match=r'result\["a"\]\[2\]: bytes'):
            codec.encode_result({"a": [1, 2, b"x"]})

    def test_unserializable_object_names_the_field(self):
        with pytest.raises(TypeError, match=r'result\["k"\]: object of type .*Opaque'):
            codec.encode_result({"k": type("Opaque", (), {})()})

    def test_lone_surrogate_names_the_field(self):
        with pytest.raises(ValueError, match=r'result\["s"\]: string contains a lone surrogate'):
            codec.encode_result({"s": "ok\udc80"})

    def test_errors_are_not_chained_to_the_fast_path(self):
        # The traceback sent to Elixir shows the field error only, not the fast path's failure.
        for encode in (
            lambda: codec.encode_result({"a": [b"x"]}),
            lambda: codec.encode_json({"s": "\udc80"}, "chunk[1]"),
        ):
            with pytest.raises((TypeError, ValueError)) as info:
                encode()
            text = "".join(traceback.format_exception(info.value))
            assert "During handling" not in text and "not plain JSON" not in text

    def test_ints_beyond_the_str_digit_limit_name_the_field(self):
        assert _result({"n": 10**600})[1] == {"n": 10**600}
        if not hasattr(sys, "get_int_max_str_digits"):
            pytest.skip("no int/str digit limit in this Python")
        too_many = 10 ** (sys.get_int_max_str_digits() + 1)
        with pytest.raises(ValueError, match=r'result\["n"\]\[0\]: integer with more than'):
            codec.encode_result({"n": [too_many]})

    def test_circular_reference_is_an_error(self):
        loop: list = []
        loop.append(loop)
        with pytest.raises(ValueError, match=r"result\[0\]: circular reference"):
            codec.encode_result(loop)

    def test_chunk_data(self):
        assert codec.encode_chunk_data(None) == b""
        assert codec.encode_chunk_data(b"\x00") == b"\x00"
        assert codec.encode_chunk_data("é") == '"é"'.encode()
        assert json.loads(codec.encode_chunk_data({"n": math.inf})) == {"n": {"__snakepit_float__": "inf"}}
