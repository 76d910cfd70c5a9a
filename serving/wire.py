"""How many numbers a raw request carries as value lists, read from its protobuf wire format before parsing.

Tensors may travel as raw bytes (``tensor_content``, ``raw_input_contents``: a copy to parse) or as value
lists (``int_val``, ``float_val``, the Open Inference Protocol's typed ``contents``). A list costs far more:
protobuf parses each value into a repeated field (a 24 MP ``int_val`` image took 7.7 s to parse and 15 s to
turn into an array, on the event loop) and numpy builds its array one Python number at a time. So the
server reads their sizes from the wire first (``list_values``): one pass over the message's few fields,
skipping every length-delimited one it does not need, and only lists up to a limit are parsed at all.
"""

from __future__ import annotations

# Numeric list fields and their wire encoding: "varint", or the size of a fixed-width value.
_TENSOR_PROTO_LISTS = {5: 4, 6: 8, 7: "varint", 10: "varint", 11: "varint", 13: "varint", 16: "varint",
                       17: "varint"}  # float, double, int, int64, bool, half, uint32, uint64
_INFER_CONTENTS_LISTS = {1: "varint", 2: "varint", 3: "varint", 4: "varint", 5: "varint", 6: 4, 7: 8}
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a protobuf message (the parser then says why)."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(data: bytes, start: int, end: int):
    """``(field number, wire type, start, end)`` of each field in ``data[start:end]``; for a varint or fixed
    field, start..end are its bytes."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _WIRE_VARINT:
            _, after = _varint(data, position)
        elif wire_type == _WIRE_FIXED64:
            after = position + 8
        elif wire_type == _WIRE_FIXED32:
            after = position + 4
        elif wire_type == _WIRE_LEN:
            length, position = _varint(data, position)
            after = position + length
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if after > end:
            raise WireError("field runs past the message")
        yield number, wire_type, position, after
        position = after


def _count(data: bytes, wire_type: int, start: int, end: int, encoding) -> int:
    if wire_type != _WIRE_LEN:
        return 1  # one unpacked value
    if encoding == "varint":  # one value per byte below 0x80
        return (end - start) - len(data[start:end].translate(None, delete=bytes(range(128))))
    return (end - start) // encoding


def _list_values_in(data: bytes, start: int, end: int, lists: dict, limit: int) -> int:
    total = 0
    for number, wire_type, field_start, field_end in _fields(data, start, end):
        encoding = lists.get(number)
        if encoding is not None:
            total += _count(data, wire_type, field_start, field_end, encoding)
            if total > limit:
                return total
    return total


def predict_list_values(raw: bytes, limit: int) -> int:
    """Values a ``tensorflow.serving.PredictRequest`` carries in its inputs' numeric lists (more than
    ``limit`` once the count passes it); WireError for bytes that are not a message."""
    total = 0
    for number, wire_type, start, end in _fields(raw, 0, len(raw)):
        if number != 2 or wire_type != _WIRE_LEN:  # inputs: map<string, TensorProto>
            continue
        for entry_number, entry_type, tensor_start, tensor_end in _fields(raw, start, end):
            if entry_number == 2 and entry_type == _WIRE_LEN:
                total += _list_values_in(raw, tensor_start, tensor_end, _TENSOR_PROTO_LISTS, limit - total)
        if total > limit:
            break
    return total


def infer_list_values(raw: bytes, limit: int) -> int:
    """Values an ``inference.ModelInferRequest`` carries in its inputs' typed ``contents``."""
    total = 0
    for number, wire_type, start, end in _fields(raw, 0, len(raw)):
        if number != 5 or wire_type != _WIRE_LEN:  # inputs: InferInputTensor
            continue
        for tensor_number, tensor_type, contents_start, contents_end in _fields(raw, start, end):
            if tensor_number == 5 and tensor_type == _WIRE_LEN:  # contents
                total += _list_values_in(raw, contents_start, contents_end, _INFER_CONTENTS_LISTS,
                                         limit - total)
        if total > limit:
            break
    return total
