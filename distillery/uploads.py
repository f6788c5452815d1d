"""Refuse an oversized upload while it arrives, not after the whole body has been stored.

The first upload handler: when the request says it is larger than MAX_UPLOAD_BYTES (or the
bytes received pass it), it stops the upload (Django reads and discards the rest, nothing is
written) and marks the request, so the view can answer 413 naming the limit.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

#: Room for the other form fields and multipart boundaries around the file itself.
FORM_OVERHEAD_BYTES = 1024 * 1024


def upload_refused(request: Any) -> int | None:
    """The size of the upload this request refused (bytes), or None."""
    return getattr(request, "upload_refused_bytes", None)


class LimitedUploadHandler(FileUploadHandler):
    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        self.received = 0
        if content_length > settings.MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES:
            self.request.upload_refused_bytes = content_length  # type: ignore[union-attr]

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if upload_refused(self.request) is None and self.received > settings.MAX_UPLOAD_BYTES:
            self.request.upload_refused_bytes = self.received  # type: ignore[union-attr]
        if upload_refused(self.request) is not None:
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
