"""``llmcli serve`` — every model behind OpenAI- and Anthropic-compatible HTTP."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--api-key", envvar="LLMCLI_SERVE_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (env LLMCLI_SERVE_API_KEY).")
@click.option("-m", "--model", "default_model", default=None,
              help="Model for requests that name none (default: 'llmcli models default').")
@click.option("-n", "--no-log", is_flag=True, help="Do not log the exchanges.")
@click.option("--grace", default=10, show_default=True, type=click.IntRange(0),
              help="Seconds in-flight requests get to finish on Ctrl-C/SIGTERM.")
def serve(host: str, port: int, api_key: str | None, default_model: str | None, no_log: bool,
          grace: int) -> None:
    """Serve every model over OpenAI- and Anthropic-compatible HTTP.

    \b
    llmcli serve                      # http://127.0.0.1:8000/v1
    llmcli serve --port 9000 -m claude-haiku-4-5 --api-key secret
    """
    from llmcli import api, config

    config.mark_long_lived()
    # Heavy imports only here: `llmcli --help` never pays for FastAPI or uvicorn.
    from llmcli.serve import ServeSettings
    from llmcli.serve import serve as run

    if default_model is not None:
        api.get_model(default_model)  # an unknown name fails now, in one line
    config.remember_secret(api_key)
    settings = ServeSettings(default_model=default_model, api_key=api_key, log=not no_log)
    try:
        run(settings, host=host, port=port, grace=grace)
    except OSError as exc:
        raise click.ClickException(f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
                                   ) from None
