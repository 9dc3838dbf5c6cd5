"""Attachments: images and documents sent with a prompt (``-a``, ``attachments=``).

An :class:`Attachment` names its content one way (a file's path, an http(s) URL, or the bytes
themselves) and, once :meth:`~Attachment.resolve`-d, holds the bytes, their media type, size
and sha256. Resolving is the only place a file is read or a URL fetched for an attachment:
``llmcli serve`` builds attachments from a request's bytes only, so nothing it is sent can
make it read a file or fetch a URL.

What a model accepts is its own declaration (``Model.attachment_types``); how an attachment
goes on the wire is each plugin's (the bytes as base64, or a ``data:`` URL). The media types
llmcli knows are :data:`TYPES`; any other is refused with a clear error, as is more than
:data:`MAX_BYTES`.

Imports nothing from llmcli but the errors, and no module that costs start-up time until an
attachment is used (``record`` and the CLI import this one); ``puremagic`` (pure Python)
recognises the content, as ``llm`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmcli.errors import AttachmentError, LLMCLIError

__all__ = ["IMAGE_TYPES", "MAX_BYTES", "TYPES", "URL_BYTES", "URL_TIMEOUT", "Attachment",
           "describe_types", "fetch_url", "is_url", "read_path"]

#: The media types llmcli sends, with the extension a file of that type has.
TYPES: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
}
#: The image types: what a model that "can see" takes (Anthropic, OpenAI, Mistral).
IMAGE_TYPES: frozenset[str] = frozenset(t for t in TYPES if t.startswith("image/"))
#: The most one attachment may be, from any source (the providers' own per-request limits are
#: of this order: Anthropic 32 MB a request, OpenAI 20 MB an image).
MAX_BYTES = 20 * 1024 * 1024
#: What one URL may be (the ``-f URL`` limits): refused, whatever it claims to be, before more
#: than this is read; and the time the whole download may take.
URL_BYTES = 10 * 1024 * 1024
URL_TIMEOUT = 30.0


def is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def _size_words(size: int) -> str:
    mib, rest = divmod(size, 1024 * 1024)
    return f"{size} bytes" if rest or not mib else f"{mib} MiB"


def describe_types(types: frozenset[str] | set[str]) -> str:
    """``image/png, image/jpeg, ...`` in :data:`TYPES` order (``images`` for all of them)."""
    if set(types) == set(IMAGE_TYPES):
        return "images"
    if set(types) == set(TYPES):
        return "images, PDF"
    return ", ".join(t for t in TYPES if t in types) or "none"


@dataclass(frozen=True)
class Attachment:
    """An image or a document, given by ``path``, ``url`` or ``content`` (one of them), with
    its media ``type`` when the caller knows it (else recognised from the content, then the
    name's extension).

    A resolved attachment (:meth:`resolve`) has ``content``, ``type``, ``size`` and
    ``sha256`` set. One read back from the log may have no content (it was not stored): it
    names where it came from and what it was."""

    path: str | None = None
    url: str | None = None
    content: bytes | None = field(default=None, repr=False)
    type: str | None = None
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("path", "url", "content") if getattr(self, n) is not None]
        if len(given) > 1 and self.content is None:
            raise AttachmentError("An attachment takes a path or a url, not both")
        if not given and self.sha256 is None:
            raise AttachmentError("An attachment needs a path, a url or content")
        if self.url is not None and not is_url(self.url):
            raise AttachmentError(f"Attachment URL {self.url!r}: only http:// and https:// "
                                  "URLs are fetched")
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))

    @property
    def label(self) -> str:
        """How messages name it: its path or URL, else its type and hash."""
        if self.path is not None:
            return self.path
        if self.url is not None:
            return self.url
        digest = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return f"({self.type or 'content'}{digest})"

    @property
    def resolved(self) -> bool:
        return self.content is not None and self.type is not None and self.sha256 is not None

    @property
    def is_image(self) -> bool:
        return self.type in IMAGE_TYPES

    def resolve(self) -> Attachment:
        """This attachment with its bytes read (or fetched), its type known and checked, its
        size and hash computed; an :class:`~llmcli.errors.AttachmentError` in one line when
        that cannot be done."""
        if self.resolved:
            return self
        header_type: str | None = None
        if self.content is not None:
            data = bytes(self.content)
        elif self.url is not None:
            data, header_type = fetch_url(self.url, f"Attachment {self.url}", AttachmentError,
                                          limit=URL_BYTES, timeout=URL_TIMEOUT)
        elif self.path is not None:
            data = read_path(self.path, f"Attachment {self.path}", AttachmentError,
                             limit=MAX_BYTES)
        else:
            raise AttachmentError(f"Attachment {self.label} was not stored in the log and "
                                  "names no file or URL to read it from")
        if len(data) > MAX_BYTES:
            raise AttachmentError(f"Attachment {self.label} is larger than "
                                  f"{_size_words(MAX_BYTES)}")
        if not data:
            raise AttachmentError(f"Attachment {self.label} is empty")
        media_type = self.type or _sniff(data) or _from_name(self.path or self.url) \
            or _plain(header_type)
        if media_type in (None, "application/octet-stream"):
            raise AttachmentError(f"Attachment {self.label}: unknown type (llmcli sends "
                                  f"{', '.join(TYPES)}); name it with --at PATH TYPE")
        if media_type not in TYPES:
            raise AttachmentError(f"Attachment {self.label}: type {media_type} is not one "
                                  f"llmcli sends ({', '.join(TYPES)})")
        import hashlib

        return replace(self, content=data, type=media_type, size=len(data),
                       sha256=hashlib.sha256(data).hexdigest())

    def base64(self) -> str:
        """The content as base64 text (resolve first)."""
        import base64

        return base64.b64encode(self._bytes()).decode("ascii")

    def data_url(self) -> str:
        """The content as a ``data:`` URL (OpenAI's and Mistral's image parts)."""
        return f"data:{self.type};base64,{self.base64()}"

    def without_content(self) -> Attachment:
        return replace(self, content=None)

    def _bytes(self) -> bytes:
        if self.content is None:
            raise AttachmentError(f"Attachment {self.label} has not been read")
        return self.content

    @classmethod
    def from_base64(cls, data: str, declared: str | None) -> Attachment:
        """An attachment from a request's base64 text (``llmcli serve``): the bytes only,
        resolved at once, its type recognised from the bytes; an AttachmentError for text
        that is not base64, or bytes that are not the declared type."""
        import base64
        import binascii

        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise AttachmentError("The attachment's data is not valid base64") from None
        declared = declared.lower() if declared else None
        sniffed = _sniff(content) if content else None
        resolved = cls(content=content, type=sniffed or declared).resolve()
        if declared and sniffed and sniffed != declared:
            raise AttachmentError(f"The attachment is declared {declared} but its data is "
                                  f"{sniffed}")
        return resolved


def read_path(path: str, what: str, error: type[LLMCLIError], *,
              limit: int | None = None) -> bytes:
    """A file's bytes (at most ``limit``, checked before reading); ``error(what + ...)`` in
    one line when it cannot be read. Shared by ``-a PATH`` and ``-f PATH``."""
    file = Path(path).expanduser()
    try:
        if limit is not None and file.is_file() and file.stat().st_size > limit:
            raise error(f"{what} is larger than {_size_words(limit)}")
        return file.read_bytes()
    except FileNotFoundError:
        raise error(f"{what}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{what}: {exc.strerror or exc}") from None


def _sniff(data: bytes) -> str | None:
    import puremagic

    try:
        found = puremagic.from_string(data[:8192], mime=True)
    except (puremagic.PureError, ValueError):
        return None
    return found or None


def _from_name(name: str | None) -> str | None:
    if not name:
        return None
    import mimetypes

    guessed, _ = mimetypes.guess_type(name.split("?", 1)[0])
    return guessed


def _plain(header: str | None) -> str | None:
    return header.split(";", 1)[0].strip().lower() or None if header else None


def fetch_url(url: str, what: str, error: type[LLMCLIError], *, limit: int = URL_BYTES,
              timeout: float = URL_TIMEOUT) -> tuple[bytes, str | None]:
    """The body of an http(s) GET and its Content-Type, at most ``limit`` bytes read within
    ``timeout`` seconds in all (a server dripping a byte at a time never times a single read
    out); ``error(what + ": ...")`` in one line when it cannot be had. Shared by ``-a URL``
    and ``-f URL``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "llmcli"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            data = _read_limited(what, reply, error, limit, timeout)
            return data, reply.headers.get("Content-Type")
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        raise error(f"{what}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise error(f"{what}: cannot fetch it ({exc.reason})") from None
    except (OSError, ValueError) as exc:  # timeouts, malformed URLs
        raise error(f"{what}: cannot fetch it ({exc})") from None


def _read_limited(what: str, reply: Any, error: type[LLMCLIError], limit: int,
                  timeout: float) -> bytes:
    import time

    too_big = error(f"{what}: larger than {_size_words(limit)}; save it to a file and "
                    "pass the file")
    declared = reply.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    size = 0
    while True:
        part = reply.read1(64 * 1024) if hasattr(reply, "read1") else reply.read(64 * 1024)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
        if time.monotonic() > deadline:
            raise error(f"{what}: the download took longer than {timeout:g} s")
