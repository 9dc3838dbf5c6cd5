"""``-f`` / ``--sf``: a file's or a URL's contents added to the prompt or the system prompt.

URLs are fetched with the standard library (``urllib.request``): the core depends on no HTTP
client, and one GET needs none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmcli.errors import FragmentError

#: Long enough for a slow page, short enough that a dead host does not look like a hang:
#: the limit for the whole download, not only for each wait.
URL_TIMEOUT = 30.0
#: The most a URL's fragment may be (10 MiB: more text than any model's context); a larger
#: page is refused, whatever it claims to be, before more than this is read.
MAX_URL_BYTES = 10 * 1024 * 1024


def is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def absolute(reference: str) -> str:
    """The reference as a template stores it: a URL as given, a path made absolute."""
    return reference if is_url(reference) else os.path.abspath(os.path.expanduser(reference))


def read_fragment(reference: str) -> str:
    """The text of a file path or an http(s) URL; one clear line when it cannot be had."""
    if is_url(reference):
        return _fetch(reference)
    path = Path(reference).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FragmentError(f"Fragment {reference!r}: no such file") from None
    except IsADirectoryError:
        raise FragmentError(f"Fragment {reference!r} is a directory, not a file") from None
    except OSError as exc:
        raise FragmentError(f"Fragment {reference!r}: {exc.strerror or exc}") from None
    return _decode(reference, data)


def _fetch(url: str) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "llmcli"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as reply:  # noqa: S310
            data = _read_limited(url, reply)
            charset = reply.headers.get_content_charset()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        raise FragmentError(f"Fragment {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FragmentError(f"Fragment {url}: cannot fetch it ({exc.reason})") from None
    except (OSError, ValueError) as exc:  # timeouts, malformed URLs
        raise FragmentError(f"Fragment {url}: cannot fetch it ({exc})") from None
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return _decode(url, data)


def _read_limited(url: str, reply: Any) -> bytes:
    """The body, at most :data:`MAX_URL_BYTES`, read within :data:`URL_TIMEOUT` seconds in
    all (a server dripping a byte at a time never times a single read out)."""
    import time

    mib, rest = divmod(MAX_URL_BYTES, 1024 * 1024)
    limit = f"{MAX_URL_BYTES} bytes" if rest or not mib else f"{mib} MiB"
    too_big = FragmentError(f"Fragment {url}: larger than {limit}; save it to a file and "
                            "pass the file")
    declared = reply.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_URL_BYTES:
        raise too_big
    deadline = time.monotonic() + URL_TIMEOUT
    parts: list[bytes] = []
    size = 0
    while True:
        part = reply.read1(64 * 1024) if hasattr(reply, "read1") else reply.read(64 * 1024)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > MAX_URL_BYTES:
            raise too_big
        parts.append(part)
        if time.monotonic() > deadline:
            raise FragmentError(f"Fragment {url}: the download took longer than "
                                f"{URL_TIMEOUT:g} s")


def _decode(reference: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FragmentError(f"Fragment {reference!r} is not UTF-8 text") from None


def with_fragments(text: str | None, references: list[str]) -> str | None:
    """``text`` after the fragments' contents, each separated by a blank line (as piped
    input is from the prompt); None when there is neither."""
    parts = [read_fragment(reference).strip("\n") for reference in references]
    if text:
        parts.append(text)
    parts = [part for part in parts if part.strip()]
    return "\n\n".join(parts) if parts else text
