"""Decoding Open Inference Protocol JSON tensors: good input becomes arrays, bad input a 400."""

import numpy as np
import pytest

from maas.oip import InferError, RequestInput, TensorSpec, decode_input, encode_output

pytestmark = pytest.mark.unit
SPEC = TensorSpec(name="input", datatype="FP32", shape=[-1, 4])


def _tensor(**overrides) -> RequestInput:
    body = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    body.update(overrides)
    return RequestInput.model_validate(body)


def test_flat_and_nested_data_decode_to_the_same_array():
    flat = decode_input(_tensor(), SPEC, 0, max_rows=10)
    nested = decode_input(_tensor(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), SPEC, 0, max_rows=10)
    assert flat.dtype == np.float32 and flat.shape == (2, 4)
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize("overrides, message", [
    ({"datatype": "FP64"}, "inputs[0].datatype: input 'input' takes FP32, got 'FP64'"),
    ({"shape": [8]}, "inputs[0].shape: input 'input' has shape [-1, 4]"),
    ({"shape": [2, 5]}, "inputs[0].shape[1]"),
    ({"shape": [-2, 4]}, "inputs[0].shape[0]"),
    ({"shape": [11, 4], "data": [0.0] * 44}, "at most 10 rows per request, got 11"),
    ({"data": [1, 2, 3]}, "inputs[0].data: shape [2, 4] needs 8 values, got 3"),
    ({"data": ["a"] * 8}, "inputs[0].data: values must be FP32 numbers"),
    ({"data": [[0, 1, 2], [3, 4, 5, 6, 7]]}, "inputs[0].data: values must be FP32 numbers"),
    ({"data": [float("nan")] + [0.0] * 7}, "NaN and infinity are not accepted"),
    ({"data": [float("inf")] + [0.0] * 7}, "NaN and infinity are not accepted"),
])
def test_bad_tensors_are_refused_with_the_field_named(overrides, message):
    with pytest.raises(InferError) as info:
        decode_input(_tensor(**overrides), SPEC, 0, max_rows=10)
    assert info.value.status == 400
    assert message in info.value.message


def test_encode_output_is_flat_row_major():
    out = encode_output("label", np.array([[1, 2], [3, 4]], dtype=np.int64))
    assert out.datatype == "INT64" and out.shape == [2, 2] and out.data == [1, 2, 3, 4]


def test_encode_output_rejects_dtypes_json_cannot_carry():
    with pytest.raises(TypeError, match="OIP JSON cannot carry"):
        encode_output("x", np.array(["a"], dtype=object))


TEXT = TensorSpec(name="text", datatype="BYTES", shape=[-1])


def _text(**overrides) -> RequestInput:
    body = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "wörld 🚀"]}
    return RequestInput.model_validate(body | overrides)


def test_bytes_tensors_decode_to_strings():
    array = decode_input(_text(), TEXT, 0, max_rows=10)
    assert array.dtype == object and array.tolist() == ["hello", "wörld 🚀"]
    nested = decode_input(_text(data=[["hello"], ["wörld 🚀"]]), TEXT, 0, max_rows=10)
    assert nested.tolist() == array.tolist()
    assert decode_input(_text(shape=[0], data=[]), TEXT, 0, max_rows=10).shape == (0,)


@pytest.mark.parametrize("overrides, message", [
    ({"datatype": "FP32"}, "inputs[0].datatype: input 'text' takes BYTES, got 'FP32'"),
    ({"data": ["a", 1]}, "BYTES values must be strings (one text per element), got int 1"),
    ({"data": ["a", None]}, "got NoneType None"),
    ({"data": ["a"]}, "inputs[0].data: shape [2] needs 2 strings, got 1"),
    ({"shape": [11], "data": ["a"] * 11}, "at most 10 rows per request, got 11"),
    ({"shape": [2, 1]}, "inputs[0].shape: input 'text' has shape [-1]"),
])
def test_bad_bytes_tensors_are_refused_with_the_field_named(overrides, message):
    with pytest.raises(InferError) as info:
        decode_input(_text(**overrides), TEXT, 0, max_rows=10)
    assert info.value.status == 400 and message in info.value.message


def test_deeply_nested_strings_do_not_exhaust_the_stack():
    data: list = ["deep"]
    for _ in range(5000):
        data = [data]
    assert decode_input(_text(shape=[1], data=data), TEXT, 0, max_rows=10).tolist() == ["deep"]


def _binary_body(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    """Triton's binary tensor data extension: JSON header, then each input's bytes."""
    import json

    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


def _strings(*texts: str) -> bytes:
    import struct

    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_binary_inputs_decode_like_their_json_form():
    from maas.oip import parse_request

    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, length = _binary_body({"id": "b", "inputs": [
        {"name": "input", "shape": [2, 4], "datatype": "FP32",
         "parameters": {"binary_data_size": rows.nbytes}},
        {"name": "text", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(_strings("héllo", ""))}}]},
        rows.tobytes(), _strings("héllo", ""))
    request = parse_request(body, length)
    assert request.id == "b" and request.inputs[0].parameters == {}
    np.testing.assert_array_equal(decode_input(request.inputs[0], SPEC, 0, max_rows=10), rows)
    assert decode_input(request.inputs[1], TEXT, 1, max_rows=10).tolist() == ["héllo", ""]
    plain = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["a"]}]}'
    assert parse_request(plain, None).inputs[0].data == ["a"]


@pytest.mark.parametrize("header, chunks, length, message", [
    ({"inputs": []}, [b"xx"], None, "2 bytes after the JSON header belong to no input"),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": 15}}]}, [b"\0" * 15], None,
     "15 bytes of binary data is not a whole number of FP32 values"),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": 64}}]}, [b"\0" * 16], None,
     "inputs[0].parameters.binary_data_size: 64 bytes are not in the body"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 6}}]}, [b"\x09\0\0\0ab"], None,
     "runs past the input's binary_data_size"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 5}}]}, [b"\x01\0\0\0\xff"], None,
     "is not UTF-8 text"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "TEXT",
                  "parameters": {"binary_data_size": 1}}]}, [b"a"], None,
     "inputs[0].datatype: 'TEXT' is not an OIP datatype"),
    ({"inputs": []}, [], "abc", "Inference-Header-Content-Length: must be the byte length"),
    ({"inputs": []}, [], "999", "Inference-Header-Content-Length: must be the byte length"),
])
def test_malformed_binary_bodies_are_400_naming_the_part(header, chunks, length, message):
    from maas.oip import parse_request

    body, own_length = _binary_body(header, *chunks)
    with pytest.raises(InferError) as info:
        parse_request(body, length or own_length)
    assert info.value.status == 400 and message in info.value.message


def test_a_binary_header_that_is_not_json_is_400():
    from maas.oip import parse_request

    with pytest.raises(InferError, match="the JSON header .* is not valid JSON"):
        parse_request(b"[" * 100_000, "100000")
