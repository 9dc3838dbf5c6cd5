"""What the fakes check of a request's content parts (images, documents), against each
provider SDK's own request types, and what the real APIs refuse besides.

The SDKs' request types are TypedDicts (Anthropic, OpenAI) or pydantic models (Mistral);
each part is validated against the type its ``type`` names, with no key the type does not
declare. The base64 data must decode, and (as Anthropic's API does: "Image does not match
the provided media type") its first bytes must be those of the declared type. The magic
numbers here are the formats' own, deliberately not llmcli's code.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

#: Each format's leading bytes (PNG, JPEG, GIF, WebP's RIFF....WEBP, PDF).
_MAGIC = {
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda b: b.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "application/pdf": lambda b: b.startswith(b"%PDF-"),
}


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _typed(part: Any, kind: Any, where: str) -> str | None:
    """Why ``part`` is not a ``kind`` (a TypedDict), or None."""
    if not isinstance(part, dict):
        return f"{where}: expected an object"
    extra = set(part) - set(get_type_hints(kind))
    if extra:
        return f"{where}: unexpected field(s) {sorted(extra)} for {kind.__name__}"
    try:
        _adapter(kind).validate_python(part)
    except ValidationError as exc:
        return f"{where}: not a valid {kind.__name__}: {exc.errors()[0]['msg']}"
    return None


def _data(data: str, media_type: str, where: str) -> str | None:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"{where}: invalid base64 data"
    check = _MAGIC.get(media_type)
    if check is None:
        return f"{where}: unsupported media type {media_type}"
    if not check(raw):
        return f"{where}: Image does not match the provided media type {media_type}"
    return None


def _data_url(url: str, where: str) -> str | None:
    if not url.startswith("data:"):
        return None  # an http(s) URL: the real API fetches it; the fakes are never sent one
    header, _, data = url[5:].partition(",")
    if not header.endswith(";base64"):
        return f"{where}: only base64 data URLs are accepted"
    return _data(data, header.removesuffix(";base64"), where)


def anthropic_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why Anthropic's API would refuse these messages' content blocks, or None."""
    from anthropic.types import (
        DocumentBlockParam,
        ImageBlockParam,
        TextBlockParam,
        ToolResultBlockParam,
        ToolUseBlockParam,
    )

    kinds = {"text": TextBlockParam, "image": ImageBlockParam, "document": DocumentBlockParam,
             "tool_use": ToolUseBlockParam, "tool_result": ToolResultBlockParam}
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            continue
        for j, block in enumerate(content or []):
            where = f"messages.{i}.content.{j}"
            kind = kinds.get(block.get("type")) if isinstance(block, dict) else None
            if kind is None:
                return f"{where}: unexpected block {block!r:.60}"
            problem = _typed(block, kind, where)
            if problem:
                return problem
            if kind is ToolUseBlockParam and message.get("role") != "assistant":
                return f"{where}: tool_use blocks are only allowed in assistant messages"
            if kind is ToolResultBlockParam and message.get("role") != "user":
                return f"{where}: tool_result blocks are only allowed in user messages"
            if kind in (ImageBlockParam, DocumentBlockParam):
                if message.get("role") != "user":
                    return f"{where}: images and documents are only allowed in user messages"
                source = block["source"]
                if source.get("type") == "base64":
                    problem = _data(source["data"], source["media_type"], where)
                    if problem:
                        return problem
    return None


def openai_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why OpenAI's Chat Completions API would refuse these messages' content parts."""
    from openai.types.chat import (
        ChatCompletionContentPartImageParam,
        ChatCompletionContentPartTextParam,
    )
    from openai.types.chat.chat_completion_content_part_param import File

    kinds = {"text": ChatCompletionContentPartTextParam,
             "image_url": ChatCompletionContentPartImageParam, "file": File}
    for i, message in enumerate(messages):
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = kinds.get(part.get("type")) if isinstance(part, dict) else None
            if kind is None:
                return f"{where}: unexpected part {part!r:.60}"
            problem = _typed(part, kind, where)
            if problem:
                return problem
            if kind is not ChatCompletionContentPartTextParam and message.get("role") != "user":
                return f"{where}: image and file parts are only allowed in user messages"
            url = (part["image_url"]["url"] if kind is ChatCompletionContentPartImageParam
                   else part.get("file", {}).get("file_data"))
            if url is not None:
                problem = _data_url(url, where)
                if problem:
                    return problem
    return None


def mistral_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why Mistral's API would refuse these user messages' chunks (the SDK's ``UserMessage``)."""
    try:
        from mistralai.client.models import UserMessage
    except ImportError:  # mistralai 1.x (make test-oldest-sdks)
        from mistralai.models import UserMessage  # type: ignore[no-redef]

    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str) or message.get("role") != "user":
            if not isinstance(content, str) and content is not None:
                return f"messages[{i}]: content chunks are only checked in user messages"
            continue
        try:
            UserMessage.model_validate(message)
        except ValidationError as exc:
            return f"messages[{i}]: not a valid UserMessage: {exc.errors()[0]['msg']}"
        for j, chunk in enumerate(content or []):
            where = f"messages[{i}].content[{j}]"
            if chunk.get("type") not in ("text", "image_url"):
                return f"{where}: unexpected chunk type {chunk.get('type')!r}"
            if chunk["type"] == "image_url":
                url = chunk["image_url"]
                url = url.get("url") if isinstance(url, dict) else url
                problem = _data_url(url, where)
                if problem:
                    return problem
    return None


def gemini_problem(contents: list[dict[str, Any]]) -> str | None:
    """Why Gemini's API would refuse these contents' parts (the SDK's ``Part``, read from the
    REST JSON as the SDK itself reads it), or None."""
    import json

    from google.genai.types import Part

    for i, content in enumerate(contents):
        for j, part in enumerate(content.get("parts") or []):
            where = f"contents[{i}].parts[{j}]"
            try:
                Part.model_validate_json(json.dumps(part))
            except ValidationError as exc:
                return f"{where}: not a valid Part: {exc.errors()[0]['msg']}"
            # Protobuf's JSON takes either spelling (the SDK sends inlineData.mime_type).
            inline = part.get("inlineData", part.get("inline_data"))
            if inline is not None:
                if content.get("role") != "user":
                    return f"{where}: inline data is only checked in user turns"
                media_type = inline.get("mimeType", inline.get("mime_type", ""))
                problem = _data(inline.get("data", ""), media_type, where)
                if problem:
                    return problem
    return None
