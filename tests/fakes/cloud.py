"""Claude on Amazon Bedrock and on Google Vertex AI, faked on 127.0.0.1: the Messages API of
tests/fakes/anthropic.py (native prefill eaten, Claude 4.6+ reject it, the trailing
whitespace 400) behind each platform's own paths, authentication, version field and framing.

* **Bedrock** (InvokeModel): ``POST /model/{id}/invoke`` and
  ``/model/{id}/invoke-with-response-stream``; the model in the path, ``anthropic_version:
  bedrock-2023-05-31`` in the body (the first-party ``2026-10-21`` is a 400, as Anthropic's
  Bedrock page warns); a SigV4 ``Authorization`` header whose signature is checked against
  the fake's credentials, or a Bedrock API key as a bearer token; a stream is an AWS event
  stream (``application/vnd.amazon.eventstream``: each ``chunk`` event's payload is
  ``{"bytes": base64(event JSON)}``, errors are ``exception`` messages); error bodies are
  ``{"message": ...}`` with ``x-amzn-ErrorType``.
* **Vertex AI**: ``POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{m}:rawPredict``
  and ``:streamRawPredict`` (SSE, as first-party); ``anthropic_version: vertex-2023-10-16``
  in the body; ``Authorization: Bearer <access token>``; errors in Google's shape
  (``{"error": {"code", "message", "status"}}``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import urllib.parse
from typing import Any

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import RecordedRequest, Reply

BEDROCK_VERSION = "bedrock-2023-05-31"
VERTEX_VERSION = "vertex-2023-10-16"

# -- Bedrock -----------------------------------------------------------------------------------

#: Bedrock's error names per status (x-amzn-ErrorType), as its API reference lists them.
BEDROCK_ERRORS = {400: "ValidationException", 401: "UnrecognizedClientException",
                  403: "AccessDeniedException", 404: "ResourceNotFoundException",
                  408: "ModelTimeoutException", 429: "ThrottlingException",
                  500: "InternalServerException", 503: "ServiceUnavailableException"}


def bedrock_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    kind = BEDROCK_ERRORS.get(status, "InternalServerException" if status >= 500
                              else "ValidationException")
    return Reply(status=status, json_body={"message": message},
                 headers={"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/"
                                              "com.amazon.bedrock/",
                          "x-amzn-requestid": "fake-request", **(headers or {})})


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (struct.pack("!B", len(raw_name)) + raw_name + b"\x07"  # 7: a string value
            + struct.pack("!H", len(raw_value)) + raw_value)


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event stream encoding (vnd.amazon.eventstream): a prelude
    (total length, headers length, CRC32), the headers, the payload, a CRC32 of it all."""
    encoded = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack("!I", binascii.crc32(body))


def bedrock_chunk(event: dict[str, Any]) -> bytes:
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()})
    return event_message({":event-type": "chunk", ":content-type": "application/json",
                          ":message-type": "event"}, payload.encode())


def bedrock_exception(kind: str, message: str) -> bytes:
    """An error inside a started stream (``throttlingException``, ``internalServerException``,
    ``modelStreamErrorException``, ...)."""
    return event_message({":exception-type": kind, ":content-type": "application/json",
                          ":message-type": "exception"}, json.dumps({"message": message}).encode())


_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)"
                    r"/(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
                    r"Signature=(?P<signature>[0-9a-f]{64})$")


class FakeBedrock(FakeAnthropic):
    """Bedrock Runtime's InvokeModel for Anthropic models."""

    stream_headers = {"content-type": "application/vnd.amazon.eventstream",
                      "x-amzn-bedrock-content-type": "application/json"}

    def __init__(self, access_key: str = "AKIDFAKEBEDROCK0001",
                 secret_key: str = "fake/secret/for+bedrock/tests0000000000",
                 region: str = "us-east-1",
                 api_key: str = "bedrock-api-key-fake-0123456789") -> None:
        super().__init__(api_key=api_key)
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        #: What the last request authenticated with: "sigv4" or "bearer".
        self.auth_used: list[str] = []

    def frame(self, payload: dict[str, Any]) -> bytes:
        return bedrock_chunk(payload)

    def error_frame(self, error_type: str, message: str) -> bytes:
        kinds = {"overloaded_error": "serviceUnavailableException",
                 "rate_limit_error": "throttlingException"}
        return bedrock_exception(kinds.get(error_type, "internalServerException"), message)

    def respond(self, request: RecordedRequest) -> Reply:
        match = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream)",
                             request.path)
        if request.method != "POST" or match is None:
            return bedrock_error(404, f"Unknown operation {request.method} {request.path}")
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        body = request.body
        if not isinstance(body, dict):
            return bedrock_error(400, "Malformed input request, please reformat your input")
        if body.get("anthropic_version") != BEDROCK_VERSION:
            return bedrock_error(400, "Invalid API version: "
                                      f"{body.get('anthropic_version')!r}")
        for field in ("model", "stream"):
            if field in body:
                return bedrock_error(400, f"Malformed input request: extraneous key [{field}] "
                                          "is not permitted, please reformat your input")
        model_id = urllib.parse.unquote(match.group(1))
        claude = re.match(r"^(?:[a-z]+\.)?anthropic\.(claude-[^:]+)", model_id)
        if claude is None:
            return bedrock_error(400, f"The provided model identifier is invalid: {model_id}")
        streaming = match.group(2) == "invoke-with-response-stream"
        return self.answer({**body, "model": claude.group(1), "stream": streaming})

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            self.auth_used.append("bearer")
            if authorization.removeprefix("Bearer ") != self.api_key:
                return bedrock_error(403, "Authentication failed: invalid API key")
            return None
        self.auth_used.append("sigv4")
        parts = _SIGV4.match(authorization)
        if parts is None:
            return bedrock_error(403, "Missing Authentication Token")
        if parts["key"] != self.access_key:
            return bedrock_error(403, "The security token included in the request is invalid.")
        if (parts["region"], parts["service"]) != (self.region, "bedrock"):
            return bedrock_error(403, f"Credential should be scoped to a valid region "
                                      f"({parts['region']}/{parts['service']})")
        if parts["signature"] != self._signature(request, parts["signed"].split(";")):
            return bedrock_error(403, "The request signature we calculated does not match the "
                                      "signature you provided.")
        return None

    def _signature(self, request: RecordedRequest, signed: list[str]) -> str:
        """SigV4 recomputed here from the request as received (botocore's signer)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        headers = {name: request.headers[name] for name in signed if name in request.headers}
        url = f"http://{request.headers['host']}{request.path}"
        aws = AWSRequest(method=request.method, url=url, headers=headers, data=request.raw)
        aws.context["timestamp"] = request.headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "bedrock",
                           self.region)
        canonical = signer.canonical_request(aws)
        return signer.signature(signer.string_to_sign(aws, canonical), aws)


# -- Vertex AI ---------------------------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def google_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """Google's error body: ``{"error": {"code", "message", "status"}}``."""
    return Reply(status=status, json_body={"error": {
        "code": status, "message": message,
        "status": _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500
                                     else "FAILED_PRECONDITION"),
    }}, headers=headers or {})


class FakeVertex(FakeAnthropic):
    """Vertex AI's rawPredict / streamRawPredict for Anthropic's publisher models."""

    def __init__(self, access_token: str = "ya29.fake-vertex-access-token-0123456789",
                 project: str = "llmcli-test", region: str = "us-east5") -> None:
        super().__init__(api_key=access_token)
        self.project = project
        self.region = region

    def respond(self, request: RecordedRequest) -> Reply:
        match = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/"
                             r"models/([^/:]+):(rawPredict|streamRawPredict)", request.path)
        if request.method != "POST" or match is None:
            return google_error(404, f"The requested URL {request.path} was not found.")
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return google_error(401, "Request had invalid authentication credentials. "
                                     "Expected OAuth 2 access token.")
        project, region, model, method = match.groups()
        if (project, region) != (self.project, self.region):
            return google_error(403, f"Permission denied on resource project {project} "
                                     f"in {region}.")
        body = request.body
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received.")
        if body.get("anthropic_version") != VERTEX_VERSION:
            return google_error(400, "anthropic_version: must be vertex-2023-10-16")
        if "model" in body:
            return google_error(400, "model: Extra inputs are not permitted")
        if bool(body.get("stream")) != (method == "streamRawPredict"):
            return google_error(400, f"stream must be {method == 'streamRawPredict'} for "
                                     f":{method}")
        return self.answer({**body, "model": urllib.parse.unquote(model).partition("@")[0]})
