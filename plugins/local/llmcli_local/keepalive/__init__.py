"""Keep-alive: a background process keeps a local model loaded between calls.

With ``-o keep_alive 5m`` (or ``LLMCLI_LOCAL_KEEP_ALIVE=5m``) a call that finds no worker for
its model runs in its own process as usual and then starts one. The worker loads the same
model and serves later calls over a Unix socket that only this user can reach; those calls
import no torch and load nothing. It exits after the keep-alive time passes with no call, on
``llmcli local stop``, or when killed.

Only inference moves to the worker: the calling process still normalizes the text and writes
the log, and a worker that is gone, stale or busy starting is never an error (the call runs
in process). The worker is keyed by everything its answers depend on (the weights file and
its version, device, backend, cache location, the interpreter and this package's code), so a
changed file or an upgrade gets a new worker and the old one idles out.

- :mod:`~llmcli_local.keepalive.protocol`: what both sides share (socket directory, messages,
  errors, the worker's start-up spec);
- :mod:`~llmcli_local.keepalive.client`: the calling side (its `WorkerAddress`);
- :mod:`~llmcli_local.keepalive.server`: the worker process.
"""
