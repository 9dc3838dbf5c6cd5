"""``llmcli serve``: every llmcli model behind OpenAI- and Anthropic-compatible HTTP.

    protocol.py   the wire formats (pydantic) → one Chat; the prefill rules of each dialect
    app.py        the application: settings, middleware, lifespan, /v1/models, /health
    runner.py     what every wire shares: the router of a Wire (authenticate, parse, build
                  the PromptSpec, prepare through llmcli.api, run, stream or reply), the
                  requests in flight, cutting them short; errors in the wire's shape
    openai_wire.py     /v1/chat/completions: its WIRE (parser, reply and stream rendering)
    anthropic_wire.py  /v1/messages: its WIRE (parser, reply and stream rendering)
    exchange.py   an AsyncResponse run in a task on the event loop; cancellation; a
                  model's slots
    errors.py     llmcli's errors as HTTP statuses, in each wire's error shape
    guard.py      what a request must pass first (Host/Origin, JSON, body size and time,
                  concurrency); the model allowlist; a model that would call the server itself
    server.py     uvicorn on a bound socket; clean shutdown

Imported only by the ``serve`` command: FastAPI and uvicorn never load for other commands.
"""

from __future__ import annotations

from llmcli.serve.app import ServeSettings, create_app
from llmcli.serve.server import serve

__all__ = ["ServeSettings", "create_app", "serve"]
