"""The one multipart/form-data reader every service uses: caller-controlled bytes never become a 500.

Everything aiohttp's ``MultipartReader`` can raise on a malformed body (a part header holding
control bytes or longer than a line may be, a missing or unterminated boundary, an unknown
``Content-Transfer-Encoding`` or ``Content-Encoding``, bad base64, a nested multipart part) is the
caller's mistake and answers ``400 malformed_form``. Other answers: ``415 multipart_required``
(another content type), ``413 too_large`` (a file past its limit, or the whole body past the
server's), ``422 file_required`` (a file part the form needs is missing).

Text fields must be UTF-8 without NUL characters (what PostgreSQL's text columns hold); file
parts are kept as raw bytes, streamed in chunks so that an oversized file is refused as soon as it
passes its limit. Parts the form does not name are skipped. The first part of a file's name wins;
for a text field, the last.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from emeterai_shared.http import ApiError

MAX_FIELD_BYTES = 4096
CHUNK_BYTES = 64 * 1024

MALFORMED_BODY = (HttpProcessingError, ValueError, AssertionError, RuntimeError, LookupError, zlib.error)
"""What the multipart parser raises on malformed caller bytes: ``InvalidHeader``/``LineTooLong``
(``HttpProcessingError``), ``ValueError`` (boundary missing or unterminated, bad base64, a
``UnicodeDecodeError``), ``RuntimeError`` (unknown transfer or content encoding), ``LookupError``
(unknown charset) and ``zlib.error`` (a corrupt compressed part)."""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def require_multipart(request: web.Request) -> None:
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "multipart_required", "the body must be multipart/form-data")


async def read_form(request: web.Request, *, files: Mapping[str, int], fields: Collection[str] = (),
                    max_field_bytes: int = MAX_FIELD_BYTES, required_files: Collection[str] = ()) -> Form:
    """Read the parts named in ``files`` (name → largest size in bytes) and ``fields``."""
    require_multipart(request)
    form = Form()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "malformed_form", "nested multipart bodies are not accepted")
            name = part.name or ""
            if name in files and name not in form.files:
                form.files[name] = await _read_file(part, name, files[name])
            elif name in fields:
                form.fields[name] = await _read_field(part, name, max_field_bytes)
            else:
                await part.release()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "too_large", "the request is larger than this server accepts") from exc
    except MALFORMED_BODY as exc:
        raise ApiError(400, "malformed_form", f"the multipart body cannot be read: {_describe(exc)}") from None
    for name in required_files:
        if name not in form.files:
            raise ApiError(422, "file_required", f"the form needs a `{name}` file part")
    return form


async def _read_file(part: BodyPartReader, name: str, max_bytes: int) -> bytes:
    chunks, total = [], 0
    while chunk := await part.read_chunk(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, "too_large", f"the {name} part is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_field(part: BodyPartReader, name: str, max_bytes: int) -> str:
    raw = await part.read(decode=True)
    if len(raw) > max_bytes:
        raise ApiError(400, "malformed_form", f"the field {name} is longer than {max_bytes} bytes")
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError: malformed_form
    if "\x00" in text:
        raise ApiError(400, "malformed_form", f"the field {name} holds a NUL character")
    return text


def _describe(exc: Exception) -> str:
    """A one-line reason: aiohttp's header errors carry the offending bytes over several lines."""
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return " ".join(str(text).split())[:200] or type(exc).__name__
