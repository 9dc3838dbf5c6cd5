"""The model layer's names in one import, as before the split (plugins and users import
from here): the plugin contract (:mod:`llmcli.contract`, with the data of
:mod:`llmcli.request`), the response runtime (:mod:`llmcli.response`), request preparation
(:mod:`llmcli.prepare`) and the prompt spec (:mod:`llmcli.spec`). Nothing is defined here.
"""

from __future__ import annotations

import llmcli.request as _request
from llmcli.attachments import Attachment
from llmcli.chain import AsyncChainResponse, ChainResponse
from llmcli.contract import *  # Model, AsyncModel, ...: named in __all__
from llmcli.prepare import *  # prepare_response, resolve_key, ...
from llmcli.record import Message, ResponseRecord
from llmcli.request import *  # the data core and backend exchange
from llmcli.response import AsyncResponse, Conversation, Response
from llmcli.spec import Logger, PromptSpec
from llmcli.tools import Tool

__all__ = ["Attachment", "AsyncChainResponse", "AsyncConversation", "AsyncModel",
           "AsyncResponse", "BaseOptions", "ChainResponse", "Conversation", "Logger", "Message",
           "Model", "NATIVE_PREFILL", "PromptSpec", "ResponseRecord", "Response", "Tool",
           "chain_spec", "concurrency_limit", "has_native_async", "prepare_async_response",
           "prepare_response", "prompt_spec", "resolve_key", "validate_options"]
__all__ += _request.__all__
