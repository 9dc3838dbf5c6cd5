"""``llmcli serve`` — every model behind OpenAI- and Anthropic-compatible HTTP."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from llmcli.log import SharedLog


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
@click.option("--allow-model", "allow_models", multiple=True, metavar="NAME",
              help="Serve only this model (repeatable; -m's model is always served).")
@click.option("--allow-models-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Serve only the models named in FILE, one a line.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
              help="Also answer a Host or Origin of HOST (repeatable; '*': any, "
                   "behind a reverse proxy).")
@click.option("--max-body", default="4M", show_default=True, metavar="SIZE",
              help="Largest request body: bytes, or with K or M.")
@click.option("--max-concurrent", default=64, show_default=True, type=click.IntRange(1),
              metavar="N",
              help="Model requests answered at once; beyond, 429.")
@click.option("--read-timeout", default=30.0, show_default=True,
              type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Seconds a client has to send a request's headers, then its body.")
def serve(host: str, port: int, api_key: str | None, default_model: str | None, no_log: bool,
          grace: int, allow_models: tuple[str, ...], allow_models_file: Path | None,
          allowed_hosts: tuple[str, ...], max_body: str, max_concurrent: int,
          read_timeout: float) -> None:
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
    from llmcli.serve.guard import is_loopback_host

    if api_key is None and "LLMCLI_SERVE_API_KEY" in os.environ:
        api_key = os.environ["LLMCLI_SERVE_API_KEY"]  # click reads an empty one as unset
    if api_key is not None and not api_key.strip():
        # An empty key would be no key: every client let in, when a key was asked for.
        raise click.ClickException("--api-key (or LLMCLI_SERVE_API_KEY) is empty: give a "
                                   "key, or leave it unset to serve without one")
    if default_model is not None:
        api.get_model(default_model)  # an unknown name fails now, in one line
    allowed = _allowed_models(default_model, allow_models, allow_models_file)
    config.remember_secret(api_key)
    if not api_key and not is_loopback_host(host):
        click.echo(f"llmcli serve: warning: listening on {host} without --api-key: anyone who "
                   "can reach this address can use every model it serves, with your "
                   "provider keys", err=True)
    # A log that cannot be written refuses the start, in one line: not a 500 per request.
    log_to = _open_log() if not no_log and config.logging_enabled() else None
    settings = ServeSettings(default_model=default_model, api_key=api_key, log=not no_log,
                             log_to=log_to,
                             allowed_models=allowed, allowed_hosts=allowed_hosts,
                             max_body=_bytes(max_body), max_concurrent=max_concurrent,
                             read_timeout=read_timeout)
    try:
        run(settings, host=host, port=port, grace=grace)
    except OSError as exc:
        raise click.ClickException(f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
                                   ) from None
    finally:
        if log_to is not None:
            log_to.close()


def _open_log() -> SharedLog:
    """The log, opened and written once (a row written and taken back), or a one-line
    error. A log that fails later (a full disk) costs no reply: each exchange it misses is
    a warning line on stderr (``llmcli.Response.log_error``)."""
    import warnings

    from llmcli.errors import LLMCLIError, LogError, LogWarning
    from llmcli.log import SharedLog

    warnings.filterwarnings("ignore", category=LogWarning)  # said per exchange instead
    try:
        log = SharedLog()
        log.check()
    except LLMCLIError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pass -n" not in message:
            message += "; pass -n to serve without logging"
        raise LogError(message) from None
    return log


def _bytes(size: str) -> int:
    """``--max-body``: a number of bytes, or with K or M (KiB, MiB)."""
    text = size.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) == 0:
        raise click.ClickException(f"--max-body {size!r}: give a size such as 4M, 512K or "
                                   "65536")
    return int(number) * scale


def _allowed_models(default_model: str | None, names: tuple[str, ...],
                    path: Path | None) -> tuple[str, ...] | None:
    """The ids of the models to serve (None: every model): ``--allow-model`` names and
    ``--allow-models-file``'s lines (blank lines and ``#`` comments skipped), each resolved
    now, so that a typo fails at start in one line; the default model is one of them."""
    from llmcli import api
    from llmcli.errors import LLMCLIError

    if not names and path is None:
        return None
    wanted = list(names)
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise click.ClickException(f"--allow-models-file {path}: cannot read it ({why})"
                                       ) from None
        wanted += [line.split("#", 1)[0].strip() for line in lines]
    ids = [api.get_model(name).model_id for name in wanted if name]
    if not ids:
        raise click.ClickException("--allow-model/--allow-models-file name no model")
    # The default model is always served (if none is usable, a request names a model).
    with contextlib.suppress(LLMCLIError):
        ids.insert(0, api.get_model(default_model).model_id)
    return tuple(dict.fromkeys(ids))
