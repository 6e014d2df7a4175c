"""MJPEG over HTTP (``multipart/x-mixed-replace``) read in pure Python: http.client plus a part parser.

Used by the ``http`` source with ``backend = "mjpeg"``, and by default when OpenCV has no
FFMPEG. Compared with FFMPEG it reports what the server said (``401 Unauthorized``, the wrong
content type), has an exact read timeout, and ``stop()`` can interrupt a blocked read by
shutting the socket down.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
from typing import Callable
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from edge.sources.base import Frame, FrameSource, SourceError, as_bgr, redact_url

# More than any camera frame; a stream whose part grows past it is broken (or hostile).
MAX_PART_BYTES = 32 * 1024 * 1024
# Undecodable parts in a row before the stream counts as broken (and is reopened).
MAX_BAD_PARTS_IN_A_ROW = 50


class MultipartReader:
    """Splits a multipart byte stream into part bodies.

    ``read_chunk()`` returns the next bytes (b"" at the end). Parts with a Content-Length are cut
    at that length; parts without one end where the next delimiter line starts.
    """

    def __init__(self, read_chunk: Callable[[], bytes], boundary: str, max_part_bytes: int = MAX_PART_BYTES):
        if not boundary:
            raise ValueError("multipart: empty boundary")
        self._read_chunk = read_chunk
        # RFC 2046 says delimiter = "--" + boundary. Cameras that declare "boundary=--frame" and write
        # "--frame" also exist; searching "--" + boundary.lstrip("-") matches both writings.
        self._delimiter = b"--" + boundary.lstrip("-").encode("latin-1")
        self._buffer = bytearray()
        self._eof = False
        self.max_part_bytes = max_part_bytes

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._read_chunk()
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _find(self, needle: bytes, start: int = 0) -> int:
        """Index of ``needle`` at or after ``start``, reading more as needed; -1 at the end of the stream."""
        search_from = start
        while True:
            index = self._buffer.find(needle, search_from)
            if index >= 0:
                return index
            if len(self._buffer) > self.max_part_bytes + 4096:
                raise SourceError(f"multipart: no boundary within {self.max_part_bytes} bytes")
            # Only the tail could still hold the start of a match.
            search_from = max(start, len(self._buffer) - len(needle) + 1)
            if not self._fill():
                return -1

    def next_part(self) -> tuple[dict[str, str], bytes] | None:
        """(headers with lower-case names, body) of the next part, or None at the end of the stream."""
        at = self._find(self._delimiter)
        if at < 0:
            return None
        del self._buffer[: at + len(self._delimiter)]
        while len(self._buffer) < 2 and self._fill():
            pass
        if self._buffer[:2] == b"--":  # the closing delimiter: the server ended the stream
            return None
        # The delimiter line's own line break plus the header lines end at the first empty line.
        end = self._find_header_end()
        if end is None:
            return None
        head_end, body_start = end
        headers = _parse_headers(bytes(self._buffer[:head_end]))
        del self._buffer[:body_start]
        length = headers.get("content-length", "")
        if length.isdigit():
            size = int(length)
            if size > self.max_part_bytes:
                raise SourceError(f"multipart: part of {size} bytes is larger than {self.max_part_bytes}")
            while len(self._buffer) < size:
                if not self._fill():
                    return None
            body = bytes(self._buffer[:size])
            del self._buffer[:size]
            return headers, body
        at = self._find(self._delimiter)
        if at < 0:
            return None
        body = bytes(self._buffer[:at])
        del self._buffer[:at]
        return headers, _strip_line_break(body)

    def _find_header_end(self) -> tuple[int, int] | None:
        """(end of the header block, start of the body) after the delimiter; tolerates bare "\\n"."""
        search_from = 0
        while True:
            crlf = self._buffer.find(b"\r\n\r\n", search_from)
            lf = self._buffer.find(b"\n\n", search_from)
            candidates = [(i, i + 4) for i in (crlf,) if i >= 0] + [(i, i + 2) for i in (lf,) if i >= 0]
            if candidates:
                return min(candidates)
            if len(self._buffer) > 65536:
                raise SourceError("multipart: part headers longer than 64 KiB")
            search_from = max(0, len(self._buffer) - 3)
            if not self._fill():
                return None


def _strip_line_break(body: bytes) -> bytes:
    if body.endswith(b"\r\n"):
        return body[:-2]
    if body.endswith(b"\n"):
        return body[:-1]
    return body


def _parse_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/x-mixed-replace; boundary=...`` Content-Type, or None."""
    if not content_type.lower().startswith("multipart/"):
        return None
    match = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type, flags=re.IGNORECASE)
    return match.group(1).strip() if match else None


class MjpegHttpSource(FrameSource):
    """An MJPEG camera or server over HTTP(S), read without OpenCV's FFMPEG.

    Credentials may be given in the URL (``http://user:pass@host/...``, sent as HTTP Basic auth);
    they never appear in the label, events or logs.
    """

    type_name = "http"

    def __init__(self, url: str, open_timeout: float = 10.0, read_timeout: float = 5.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http source: 'uri' must be http://host[:port]/path, got {redact_url(url)!r}")
        super().__init__(label=redact_url(url))
        self.url = url
        self.open_timeout = float(open_timeout)
        self.read_timeout = float(read_timeout)
        self._parts = parts
        self._connection: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._sock: socket.socket | None = None
        self._reader: MultipartReader | None = None

    def open(self) -> None:
        self.close()
        parts = self._parts
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname, parts.port, timeout=self.open_timeout)
        headers = {"User-Agent": "poseface-edge", "Accept": "multipart/x-mixed-replace, image/jpeg"}
        if parts.username is not None:
            userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(userpass).decode("ascii")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("GET", path, headers=headers)
            # Kept now: getresponse() drops connection.sock for a response that ends with the connection
            # (any stream without a length), but the read timeout and stop() need the socket.
            sock = connection.sock
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise SourceError(f"http source {self.label}: cannot connect: {exc}") from exc
        if response.status != 200:
            connection.close()
            raise SourceError(
                f"http source {self.label}: server answered {response.status} {response.reason} (expected 200)"
            )
        content_type = response.getheader("Content-Type", "")
        boundary = multipart_boundary(content_type)
        if boundary is None:
            connection.close()
            raise SourceError(
                f"http source {self.label}: Content-Type is {content_type!r}, expected multipart/x-mixed-replace "
                "with a boundary (MJPEG); use backend = 'ffmpeg' for other streams"
            )
        sock.settimeout(self.read_timeout)
        self._connection, self._response, self._sock = connection, response, sock
        self._reader = MultipartReader(self._read_chunk, boundary)
        self._set_state("streaming")

    def _read_chunk(self) -> bytes:
        response = self._response
        if response is None:
            return b""
        try:
            return response.read1(65536)
        except socket.timeout as exc:
            raise SourceError(f"http source {self.label}: no data for {self.read_timeout:g} s") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: the response was closed under us by stop().
            if self.stopped:
                return b""
            raise SourceError(f"http source {self.label}: connection lost: {exc}") from exc

    def read(self) -> Frame | None:
        if self._reader is None:
            raise SourceError(f"http source {self.label}: read() before open()")
        bad_in_a_row = 0
        while not self.stopped:
            part = self._reader.next_part()
            if part is None:
                return None  # the server closed the stream
            _headers, body = part
            image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR) if body else None
            if image is not None:
                return self._emit(as_bgr(image, f"http source {self.label}"))
            self._note_bad_frame(f"http source {self.label}: a part of {len(body)} bytes is not a decodable JPEG")
            bad_in_a_row += 1
            if bad_in_a_row >= MAX_BAD_PARTS_IN_A_ROW:
                raise SourceError(f"http source {self.label}: {bad_in_a_row} undecodable parts in a row")
        return None

    def close(self) -> None:
        connection, response, sock = self._connection, self._response, self._sock
        self._connection, self._response, self._sock, self._reader = None, None, None, None
        for closable in (response, connection, sock):
            if closable is not None:
                closable.close()
        if self._state != "idle":
            self._set_state("ended")

    def _interrupt(self) -> None:
        # shutdown() (unlike close()) wakes a recv() blocked in another thread at once.
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
