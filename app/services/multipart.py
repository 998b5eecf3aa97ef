"""A streaming `multipart/form-data` reader for uploads: the file part's bytes are handed on as they arrive.

Starlette's `request.form()` spools a whole file before the route sees it; here the body is fed to
python-multipart's push parser chunk by chunk, so the caller writes the file to disk and applies its
size cap while the body streams (chunked bodies included). Small text fields are kept in memory, each
bounded; a second file, too many parts or an oversized field is refused (422).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.services.errors import Unprocessable

MAX_FIELD_BYTES = 4096
MAX_PARTS = 8
LOC_BODY = ("body",)


class MultipartUpload:
    """One file field (`file_field`) and a few text fields of a multipart body.

    Iterate :meth:`file_chunks` over the request's body stream; once it is exhausted, `filename` and
    `fields` are complete. `filename` is known as soon as the first chunk is yielded.
    """

    def __init__(self, content_type: str, file_field: str = "file") -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise Unprocessable("multipart body without a boundary", loc=("header", "content-type"))
        self.file_field = file_field
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self._pending: list[bytes] = []
        self._parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: str | None = None  # "file", a field name, or None (ignored part)
        self._field_value = bytearray()
        self._saw_file = False
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # -- parser callbacks (synchronous, called from `write`)

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise Unprocessable(f"multipart body with more than {MAX_PARTS} parts", loc=LOC_BODY)
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._field_value = bytearray()
        if b"filename" in options and name == self.file_field:
            if self._saw_file:
                raise Unprocessable("send one file only", loc=("body", self.file_field))
            self._saw_file = True
            self.filename = options[b"filename"].decode("utf-8", "replace") or "upload.npz"
            self._current = "file"
        elif b"filename" in options:
            message = f"unexpected file field {name!r}; send the file as 'file'"
            raise Unprocessable(message, loc=("body", name))
        else:
            self._current = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == "file":
            self._pending.append(data[start:end])
        elif self._current is not None:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise Unprocessable(f"field longer than {MAX_FIELD_BYTES} bytes", loc=("body", self._current))

    def _on_part_end(self) -> None:
        if self._current not in (None, "file"):
            try:
                self.fields[self._current] = self._field_value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Unprocessable("field is not UTF-8 text", loc=("body", self._current)) from exc
        self._current = None

    def _on_end(self) -> None:
        self._finished = True

    # -- streaming

    async def file_chunks(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The file part's bytes, chunk by chunk, as `body` (the raw request stream) is read."""
        async for chunk in body:
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise Unprocessable("malformed multipart body", loc=LOC_BODY) from exc
            pending, self._pending = self._pending, []
            for piece in pending:
                if piece:
                    yield piece
        self._parser.finalize()
        if not self._saw_file:
            message = f"multipart upload needs a file field named {self.file_field!r}"
            raise Unprocessable(message, loc=("body", self.file_field))
        if not self._finished:
            raise Unprocessable("multipart body ends before its closing boundary", loc=LOC_BODY)
