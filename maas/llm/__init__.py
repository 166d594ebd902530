"""Pretrained causal language models made servable (``source: pretrained``, ``task: chat``).

``files`` names a built model's files and lays a registered version out as a directory an
engine can load; ``convert`` turns a GGUF file, a Hugging Face directory or a package that
ships one into ONNX variants with the onnxruntime-genai builder (cached by the source's
sha256); ``measure`` scores each variant on the shipped held-out text (``heldout.txt``) and
picks one. Needs the ``llm`` extra: ``pip install 'maas[llm]'``.
"""
