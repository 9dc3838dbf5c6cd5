# The public API, in one place: type checkers read these imports, and llmcli/__init__.py
# builds its lazy exports and __all__ from them (PEP 562). Add a public name here only.
from llmcli.api import get_async_model as get_async_model
from llmcli.api import get_default_model as get_default_model
from llmcli.api import get_model as get_model
from llmcli.api import get_models as get_models
from llmcli.api import load_conversation as load_conversation
from llmcli.attachments import Attachment as Attachment
from llmcli.capabilities import PrefillSupport as PrefillSupport
from llmcli.capabilities import SchemaSupport as SchemaSupport
from llmcli.capabilities import ToolSupport as ToolSupport
from llmcli.chain import AsyncChainResponse as AsyncChainResponse
from llmcli.chain import ChainResponse as ChainResponse
from llmcli.contract import AsyncConversation as AsyncConversation
from llmcli.contract import AsyncModel as AsyncModel
from llmcli.contract import Model as Model
from llmcli.errors import AttachmentError as AttachmentError
from llmcli.errors import AttachmentUnsupportedError as AttachmentUnsupportedError
from llmcli.errors import ChainLimitError as ChainLimitError
from llmcli.errors import ConfigError as ConfigError
from llmcli.errors import ConversationError as ConversationError
from llmcli.errors import InvalidSchemaError as InvalidSchemaError
from llmcli.errors import KeyNeededError as KeyNeededError
from llmcli.errors import LLMCLIError as LLMCLIError
from llmcli.errors import LogError as LogError
from llmcli.errors import LogWarning as LogWarning
from llmcli.errors import OptionsError as OptionsError
from llmcli.errors import PartialResponseError as PartialResponseError
from llmcli.errors import PluginError as PluginError
from llmcli.errors import PrefillUnsupportedError as PrefillUnsupportedError
from llmcli.errors import ProviderError as ProviderError
from llmcli.errors import SchemaUnsupportedError as SchemaUnsupportedError
from llmcli.errors import SchemaValidationError as SchemaValidationError
from llmcli.errors import ToolError as ToolError
from llmcli.errors import ToolsUnsupportedError as ToolsUnsupportedError
from llmcli.errors import UnknownModelError as UnknownModelError
from llmcli.normalize import normalize_stream as normalize_stream
from llmcli.normalize import normalize_text as normalize_text
from llmcli.record import Message as Message
from llmcli.record import ToolCall as ToolCall
from llmcli.record import ToolResult as ToolResult
from llmcli.request import KeySpec as KeySpec
from llmcli.request import Options as Options
from llmcli.request import PrefillSent as PrefillSent
from llmcli.request import Request as Request
from llmcli.request import Usage as Usage
from llmcli.request import emulation_instruction as emulation_instruction
from llmcli.response import AsyncResponse as AsyncResponse
from llmcli.response import Conversation as Conversation
from llmcli.response import Response as Response
from llmcli.spec import PromptSpec as PromptSpec
from llmcli.tools import Tool as Tool

__version__: str
__all__: list[str]
