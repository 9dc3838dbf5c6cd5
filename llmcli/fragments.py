"""``-f`` / ``--sf``: a file's or a URL's contents added to the prompt or the system prompt.

URLs are fetched with the standard library (``urllib.request``, through
:func:`llmcli.attachments.fetch_url`, which ``-a URL`` shares): the core depends on no HTTP
client, and one GET needs none.
"""

from __future__ import annotations

import os

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
    from llmcli.attachments import read_path

    data = read_path(reference, f"Fragment {reference!r}", FragmentError)
    return _decode(reference, data)


def _fetch(url: str) -> str:
    from llmcli.attachments import fetch_url

    data, content_type = fetch_url(url, f"Fragment {url}", FragmentError,
                                   limit=MAX_URL_BYTES, timeout=URL_TIMEOUT)
    charset = _charset(content_type)
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return _decode(url, data)


def _charset(content_type: str | None) -> str | None:
    from email.message import Message

    if not content_type:
        return None
    message = Message()
    message["Content-Type"] = content_type
    return message.get_content_charset()


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
