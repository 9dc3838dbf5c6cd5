"""The lean backend: llmcli's native runtime for llama-like models (llama, mistral, qwen2,
qwen3), on CPU or CUDA, without transformers.

Importing transformers costs more than a second (its modeling code pulls in much of
``torch.distributed``), and building its model and tokenizer objects another; for a small
model that is most of a short run. Here:

- :mod:`~llmcli_local.lean.config`: config.json read as plain JSON, the families and what
  each changes in the layer (``FAMILIES``), and :func:`why_not`, the one check of whether
  this backend implements a model (else it runs on transformers);
- :mod:`~llmcli_local.lean.weights`: the safetensors read into plain tensors;
- :mod:`~llmcli_local.lean.tokenizer`: ``tokenizers``' own tokenizer, and the chat template
  rendered by jinja2 as transformers renders it;
- :mod:`~llmcli_local.lean.decoder`: the forward pass, one layer definition for every pass
  (prompt, steps, batched steps, the static batch), with its attention strategies in
  :mod:`~llmcli_local.lean.attention`;
- :mod:`~llmcli_local.lean.backend`: the :class:`~llmcli_local.backend.Backend` over them.

Importing this package imports only the config module (no torch).
"""

from llmcli_local.lean.config import why_not

__all__ = ["why_not"]
