"""The lean backend: llmcli's native runtime for llama-family models (llama, mistral, qwen2),
on CPU or CUDA, without transformers.

Importing transformers costs more than a second (its modeling code pulls in much of
``torch.distributed``), and building its model and tokenizer objects another; for a small
model that is most of a short run. Here:

- :mod:`~llmcli_local.lean.config`: config.json read as plain JSON, and :func:`why_not`, the
  one check of whether this backend implements a model (else it runs on transformers);
- :mod:`~llmcli_local.lean.weights`: the safetensors read into plain tensors;
- :mod:`~llmcli_local.lean.tokenizer`: ``tokenizers``' own tokenizer, and the chat template
  rendered by jinja2 as transformers renders it;
- :mod:`~llmcli_local.lean.decoder`: the forward pass (the prompt pass and the decode step);
- :mod:`~llmcli_local.lean.backend`: the :class:`~llmcli_local.backend.Backend` over them.

Importing this package imports only the config module (no torch).
"""

from llmcli_local.lean.config import why_not

__all__ = ["why_not"]
