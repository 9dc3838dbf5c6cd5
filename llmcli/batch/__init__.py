"""``llmcli batch``: a file of prompts through any model, concurrently, resumably.

    read_input (JSON Lines or CSV) → Line → plan: resolve each line's model group, merge its
    options, make the checks that need no network (an error row naming the line otherwise)
    → worker threads: Endpoints picks the least busy model of the group (round-robin on
    ties), the response is read chunk by chunk (a stop flag is checked between chunks),
    retryable failures back off and go to the next endpoint → Result, handed to the caller
    (who writes the output file) as each line ends.

Every exchange goes through :func:`llmcli.api.prompt`, so the prefill contract, option
checks and logging are the single-prompt ones; the log rows carry the batch's id.

Concurrency: ``jobs`` requests at once in all; a model may cap its own share with a
``batch_concurrency`` attribute. The local runtime's models declare 8: its scheduler
gathers the concurrent ``execute`` calls into batches itself, with no change here.

The package holds one module per concern: :mod:`~llmcli.batch.input`,
:mod:`~llmcli.batch.resume`, :mod:`~llmcli.batch.retry`, :mod:`~llmcli.batch.endpoints` and
:mod:`~llmcli.batch.pool`; every public name is importable from ``llmcli.batch`` as before.
"""

from __future__ import annotations

from llmcli.batch.endpoints import DEFAULT_JOBS, Endpoints, default_jobs
from llmcli.batch.input import FIELDS, Line, parse_group, read_input, refuse_duplicate_ids
from llmcli.batch.pool import Batch
from llmcli.batch.resume import Result, Summary, new_batch_id, resume_output
from llmcli.batch.retry import (
    FAILURE_ATTEMPTS,
    MAX_BACKOFF_S,
    RATE_LIMIT_ATTEMPTS,
    RETRY_STATUSES,
    retryable,
)

__all__ = ["DEFAULT_JOBS", "FAILURE_ATTEMPTS", "FIELDS", "MAX_BACKOFF_S",
           "RATE_LIMIT_ATTEMPTS", "RETRY_STATUSES", "Batch", "Endpoints", "Line", "Result",
           "Summary", "default_jobs", "new_batch_id", "parse_group", "read_input",
           "refuse_duplicate_ids", "resume_output", "retryable"]
