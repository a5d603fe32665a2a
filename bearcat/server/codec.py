"""Image bytes from what a client sends: base64 text (optionally a `data:` URL, as a
browser's FileReader gives) or raw bytes. Used by the HTTP server and the MLflow pyfunc."""
from __future__ import annotations

import base64
import binascii


class RequestError(ValueError):
    """A request a client got wrong; the message says what to fix."""


def image_bytes(value, field: str = "image") -> bytes:
    """bytes -> as they are; str -> base64, standard or URL-safe alphabet, line breaks
    allowed (a `data:image/...;base64,` prefix too)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            head, _, text = text.partition(",")
            if ";base64" not in head:
                raise RequestError(f"{field}: a data: URL must be base64-encoded (data:image/png;base64,...)")
        text = "".join(text.split())  # line-wrapped base64 (as `base64` prints it) is fine
        if "-" in text or "_" in text:  # the URL-safe alphabet
            text = text.replace("-", "+").replace("_", "/")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{field}: not valid base64") from None
    else:
        raise RequestError(f"{field}: expected base64 text, got {type(value).__name__}")
    if not data:
        raise RequestError(f"{field}: empty image")
    return data


# The first bytes of the formats PIL reads that captchas come in.
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    """Whether `data` starts as an image file does (WebP: RIFF....WEBP)."""
    return data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
