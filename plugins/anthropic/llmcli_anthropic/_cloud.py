"""Claude on Amazon Bedrock and Google Vertex AI, through the anthropic SDK's
``AnthropicBedrock`` and ``AnthropicVertex`` clients (extras ``anthropic[bedrock]`` and
``anthropic[vertex]``, imported only when a model runs).

Both speak the Messages API with two differences the SDK handles: the model goes in the URL
(Bedrock ``/model/{id}/invoke`` and ``/invoke-with-response-stream``, an AWS event stream;
Vertex ``.../publishers/anthropic/models/{id}:rawPredict`` and ``:streamRawPredict``, SSE),
and ``anthropic_version`` goes in the body. The platforms document their own version values
(``bedrock-2023-05-31``, ``vertex-2023-10-16``); the SDK would otherwise send its first-party
default, which Anthropic's Bedrock page warns the ARN-versioned models reject with a 400.
Prefill follows the Claude version read from the platform's id, as on the first-party API.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from pydantic import Field

from llmcli import config
from llmcli.capabilities import PrefillSupport, SchemaSupport
from llmcli.errors import ProviderError
from llmcli.models import KeySpec, Request
from llmcli.models import Options as BaseOptions
from llmcli.remote import Call, HTTPFault, WireRequest, transport_error

from . import _wire
from ._models import ClaudeModel, ClaudeOptions, prefill_support

__all__ = ["BEDROCK_MODELS", "BEDROCK_VERSION", "VERTEX_MODELS", "VERTEX_VERSION",
           "BedrockClaude", "BedrockOptions", "VertexClaude", "VertexOptions",
           "claude_id_of"]

BEDROCK_VERSION = "bedrock-2023-05-31"
VERTEX_VERSION = "vertex-2023-10-16"

#: Bedrock base model ids (Anthropic's "Claude on Amazon Bedrock" table), as users write
#: them after ``bedrock/``. On-demand calls to newer models often need a cross-region
#: inference profile: the same id with ``us.``, ``eu.``, ``jp.``, ``apac.`` or ``global.``
#: in front, which ``bedrock/<any id>`` accepts.
BEDROCK_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("anthropic.claude-opus-4-6-v1", ("bedrock-opus-4.6",)),
    ("anthropic.claude-sonnet-4-6", ("bedrock-sonnet-4.6",)),
    ("anthropic.claude-opus-4-5-20251101-v1:0", ("bedrock-opus-4.5",)),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", ("bedrock-sonnet-4.5",)),
    ("anthropic.claude-haiku-4-5-20251001-v1:0", ("bedrock-haiku-4.5",)),
)

#: Vertex AI model ids (Google's "Request predictions with Claude models" page): versions
#: before 4.6 carry an ``@date`` suffix.
VERTEX_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("claude-opus-4-6", ("vertex-opus-4.6",)),
    ("claude-sonnet-4-6", ("vertex-sonnet-4.6",)),
    ("claude-opus-4-5@20251101", ("vertex-opus-4.5",)),
    ("claude-sonnet-4-5@20250929", ("vertex-sonnet-4.5",)),
    ("claude-haiku-4-5@20251001", ("vertex-haiku-4.5",)),
)

# [geo.]anthropic.<claude id>[:revision]   (us.anthropic.claude-sonnet-4-5-20250929-v1:0)
_BEDROCK_ID = re.compile(r"^(?:[a-z]+\.)?anthropic\.(claude-[^:]+)")


def claude_id_of(platform_id: str) -> str:
    """The Claude id inside a Bedrock or Vertex id, for reading its version:
    ``us.anthropic.claude-haiku-4-5-20251001-v1:0`` → ``claude-haiku-4-5-20251001-v1``,
    ``claude-sonnet-4-5@20250929`` → ``claude-sonnet-4-5``. An id that is neither (an ARN,
    a provisioned-throughput id) comes back as it is, and so reads as a new model
    (emulated prefill: never the 400)."""
    match = _BEDROCK_ID.match(platform_id)
    if match is not None:
        return match.group(1)
    return platform_id.partition("@")[0]


_OLD_DECODER = re.compile(r"^Bad response code, expected 200: .*?':exception-type': '(\w+)'"
                          r".*?\\?\"message\\?\":\s*\\?\"(.*?)\\?\"", re.DOTALL)


def stream_exception(exc: BaseException) -> HTTPFault | None:
    """An exception message inside a Bedrock event stream, as anthropic SDKs before 2.x
    raise it (``ValueError("Bad response code, expected 200: {...}")``; newer ones turn it
    into an ``error`` event): its type and message, with the status it stands for."""
    if not isinstance(exc, ValueError):
        return None
    match = _OLD_DECODER.match(str(exc))
    if match is None:
        return None
    kind, message = match.groups()
    return _wire.status_fault(200, {"error": {"type": kind, "message": message}},
                              fallback=message)


class BedrockOptions(ClaudeOptions):
    aws_region: str | None = Field(
        default=None, description="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, "
                                  "or the profile's)")
    aws_profile: str | None = Field(
        default=None, description="A profile from ~/.aws/config (default: AWS_PROFILE or the "
                                  "default chain)")


class VertexOptions(ClaudeOptions):
    region: str | None = Field(
        default=None, description="Vertex AI region, e.g. us-east5 or global "
                                  "(default: CLOUD_ML_REGION)")
    project_id: str | None = Field(
        default=None, description="Google Cloud project (default: "
                                  "ANTHROPIC_VERTEX_PROJECT_ID, else the credentials')")


class _CloudClaude(ClaudeModel):
    """Claude behind a cloud platform: the Claude model's wire, another client. The model
    id is ``<platform>/<platform id>``; the platform id goes on the wire."""

    platform = ""
    anthropic_version = ""
    default_base_url = ""
    needs_key = None  # type: ignore[assignment]
    #: An optional bearer credential (``llmcli keys set <name>`` or its variable). Not
    #: ``needs_key``: without one the platform's own credential chain applies.
    optional_key: KeySpec
    #: The module the platform's client needs beside ``anthropic`` (the extra
    #: ``anthropic[<platform>]`` installs it), and its distribution's name.
    auth_module = ""
    auth_package = ""
    #: What to set when the SDK or the auth library fails before any request.
    setup_hint = ""

    def __init__(self, platform_id: str, aliases: tuple[str, ...] = ()) -> None:
        self.platform_id = platform_id
        self.claude_id = claude_id_of(platform_id)
        self.model_id = f"{self.platform}/{platform_id}"
        self.aliases = aliases
        self.prefill_support = prefill_support(self.claude_id, self.Options())

    def get_prefill_support(self, options: BaseOptions, stream: bool = True) -> PrefillSupport:
        if not isinstance(options, ClaudeOptions):
            options = self.Options()
        return prefill_support(self.claude_id, options)

    def prefill_note(self) -> str:
        if _wire.native_prefill(self.claude_id):
            return "emulated with -o thinking 1: the API forbids prefill with extended thinking"
        return ("Claude 4.6+ (or an id whose version cannot be read) reject assistant "
                "prefill; llmcli emulates it unless -o prefill_strict 1")

    #: Structured outputs (``output_config``) are a first-party API feature; here the reply
    #: is validated against the schema instead.
    def get_schema_support(self, options: BaseOptions) -> SchemaSupport:
        return SchemaSupport.VALIDATED

    def build(self, request: Request) -> WireRequest:
        # The Claude wire, read with the Claude id (its version picks prefill and thinking),
        # then the platform's id and API version.
        wire = _wire.build_request(replace(request, model_id=self.claude_id))
        wire.params["model"] = self.platform_id
        wire.params["extra_body"] = {"anthropic_version": self.anthropic_version}
        return wire

    def endpoint(self, request: Request) -> str:
        return super().endpoint(request) or ""

    def bearer(self) -> str | None:
        """The optional stored or exported credential, remembered so that no error or log
        line can show it."""
        key = config.get_key(self.optional_key.name, self.optional_key.env_var)
        if key:
            config.remember_secret(key)
        return key

    def _timeouts(self, call: Call) -> dict[str, Any]:
        args: dict[str, Any] = {"max_retries": call.max_retries}
        if call.base_url:
            args["base_url"] = call.base_url
        if call.timeout is not None:
            args["timeout"] = call.sdk.Timeout(call.timeout, connect=call.connect_timeout)
        return args

    def http_fault(self, exc: BaseException, call: Call) -> Any:
        fault = super().http_fault(exc, call) or stream_exception(exc)
        if fault is not None:
            return fault
        setup = isinstance(exc, (ValueError, RuntimeError)) and not isinstance(
            exc, json.JSONDecodeError)
        if setup or type(exc).__module__.startswith(("botocore", "google.auth")):
            # Missing region, project or credentials: said by the SDK or the platform's
            # auth library before any request. One line, with what to set.
            return self.setup_error(exc)
        return None

    def setup_error(self, exc: BaseException) -> ProviderError:
        return transport_error(self.provider_name, "other", provider_id=self.provider_id,
                               detail=f"{str(exc).rstrip('.')}. {self.setup_hint}")

    def import_sdk(self) -> Any:
        import importlib

        import anthropic

        try:
            importlib.import_module(self.auth_module)
        except ImportError:
            raise ProviderError(f"{self.provider_name} needs {self.auth_package}: pip install "
                                f"'anthropic[{self.platform}]'",
                                provider=self.provider_id) from None
        return anthropic


class BedrockClaude(_CloudClaude):
    provider_name = "Bedrock"
    provider_id = "bedrock"
    platform = "bedrock"
    anthropic_version = BEDROCK_VERSION
    base_url_env = "ANTHROPIC_BEDROCK_BASE_URL"
    optional_key = KeySpec("bedrock", "AWS_BEARER_TOKEN_BEDROCK")
    Options = BedrockOptions  # type: ignore[assignment]
    auth_module = auth_package = "boto3"  # AnthropicBedrock signs with it
    setup_hint = ("Set AWS_REGION (or -o aws_region) and AWS credentials (environment, "
                  "AWS_PROFILE, or AWS_BEARER_TOKEN_BEDROCK)")

    client_class = "AnthropicBedrock"

    def client_args(self, call: Call) -> dict[str, Any]:
        options: BedrockOptions = call.options
        args = self._timeouts(call)
        key = self.bearer()
        if key and options.aws_profile is None:
            args["api_key"] = key  # a Bedrock API key: Authorization: Bearer
        args["aws_region"] = options.aws_region
        args["aws_profile"] = options.aws_profile
        return args

    def key_hint(self) -> str:
        return ("AWS credentials come from the environment, AWS_PROFILE or -o aws_profile; "
                "a Bedrock API key from AWS_BEARER_TOKEN_BEDROCK or 'llmcli keys set bedrock'. "
                "The model must also be enabled in the region.")


class VertexClaude(_CloudClaude):
    provider_name = "Vertex AI"
    provider_id = "vertex"
    platform = "vertex"
    anthropic_version = VERTEX_VERSION
    base_url_env = "ANTHROPIC_VERTEX_BASE_URL"
    #: An OAuth access token (``gcloud auth print-access-token``), else Application
    #: Default Credentials.
    optional_key = KeySpec("vertex", "GOOGLE_OAUTH_ACCESS_TOKEN")
    Options = VertexOptions  # type: ignore[assignment]
    auth_module, auth_package = "google.auth", "google-auth"  # AnthropicVertex loads ADC
    setup_hint = ("Set CLOUD_ML_REGION (or -o region), ANTHROPIC_VERTEX_PROJECT_ID (or "
                  "-o project_id) and Google credentials (gcloud auth application-default "
                  "login)")

    client_class = "AnthropicVertex"

    def client_args(self, call: Call) -> dict[str, Any]:
        options: VertexOptions = call.options
        args = self._timeouts(call)
        if options.region is not None:
            args["region"] = options.region
        if options.project_id is not None:
            args["project_id"] = options.project_id
        token = self.bearer()
        if token:
            args["access_token"] = token
        return args

    def key_hint(self) -> str:
        return ("Google credentials come from 'gcloud auth application-default login' or "
                "GOOGLE_APPLICATION_CREDENTIALS; an access token from GOOGLE_OAUTH_ACCESS_TOKEN "
                "or 'llmcli keys set vertex'.")
