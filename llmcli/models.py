"""The model layer's names in one import, as before the split (plugins and users import
from here): the plugin contract (:mod:`llmcli.contract`, with the data of
:mod:`llmcli.request`), the response runtime (:mod:`llmcli.response`), request preparation
(:mod:`llmcli.prepare`) and the prompt spec (:mod:`llmcli.spec`). Nothing is defined here.
"""

from __future__ import annotations

from llmcli.attachments import Attachment
from llmcli.chain import ChainResponse

# The request data (Request, Usage, Options, ...) as the contract re-exports it.
from llmcli.contract import (
    BaseOptions,
    Chunk,
    KeySpec,
    Model,
    Options,
    PrefillSent,
    Reasoning,
    ReasoningPrefillOption,
    Request,
    StrList,
    Usage,
    concurrency_limit,
    emulation_instruction,
)
from llmcli.prepare import NATIVE_PREFILL, prepare_response, resolve_key, validate_options
from llmcli.record import Message, ResponseRecord, ToolCall, ToolResult
from llmcli.response import Conversation, Response
from llmcli.spec import Logger, PromptSpec
from llmcli.tools import Tool

__all__ = [
    "Attachment",
    "NATIVE_PREFILL",
    "BaseOptions",
    "ChainResponse",
    "Chunk",
    "Conversation",
    "KeySpec",
    "Logger",
    "Message",
    "Model",
    "Options",
    "PrefillSent",
    "PromptSpec",
    "Reasoning",
    "ReasoningPrefillOption",
    "Request",
    "ResponseRecord",
    "StrList",
    "Response",
    "Tool",
    "ToolCall",
    "ToolResult",
    "Usage",
    "concurrency_limit",
    "emulation_instruction",
    "prepare_response",
    "resolve_key",
    "validate_options",
]
