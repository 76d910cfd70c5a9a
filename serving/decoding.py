"""Decoding work bounded before it starts: JPEG scans counted from the markers, decoding in its own threads.

A progressive JPEG codes its pixels in scans, and the decoder pays for each one over the whole image: 2,000
scans in a 123 KB, 12 MP file took 15.6 s to decode. The file's markers say how many scans it holds
(each starts with an SOS marker), so ``check_jpeg_scans`` counts them, walking the segments and skipping
the entropy-coded data, and refuses a file over ``MAX_JPEG_SCANS`` before any pixel is decoded (libjpeg's
own progressive files have about 10 scans). Files are decoded and encoded in the data plane's own small
executor, never in the threads that run the model, so a slow decode does not stall small requests.
"""

from __future__ import annotations

import struct

from inpaint.core.images import ImageError

MAX_JPEG_SCANS = 100
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM: no length


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The SOS markers of a JPEG (counting stops once past ``stop_after``); a truncated file counts what it has."""
    scans, position, end = 0, 2, len(data)
    while position + 1 < end:
        if data[position] != 0xFF:  # entropy-coded data, or junk between segments: find the next marker
            position = data.find(b"\xff", position + 1)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x00 or marker in _STANDALONE:  # a stuffed 0xFF in scan data, or a marker without length
            position += 2
            continue
        if marker == _EOI:
            break
        if position + 4 > end:
            break
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == _SOS:
            scans += 1
            if scans > stop_after:
                break
        position += 2 + length
    return scans


def check_jpeg_scans(data: bytes, what: str, max_scans: int = MAX_JPEG_SCANS) -> None:
    """ImageError if ``data`` is a JPEG of more than ``max_scans`` scans (other formats pass)."""
    if not data.startswith(b"\xff\xd8"):
        return
    scans = jpeg_scans(data, max_scans)
    if scans > max_scans:
        raise ImageError(f"{what} is a progressive JPEG of more than {max_scans} scans, over the limit of "
                         f"{max_scans} scans per JPEG (each scan costs a pass over the whole image)")
