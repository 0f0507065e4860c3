"""Engines: one ``Engine`` protocol (``base``) and the runtimes behind it, a folder each.

Native code is imported only under this package:

- ``llamacpp/``: llama.cpp through llama-cpp-python's C API (``bindings``): the engine, its
  continuous batching for the server's runners (``batch``), speculative decoding (``speculative``),
  the importance matrix (``imatrix``), ggml's quantizers (``ggml_quants``) and JSON-Schema grammars
  (``json_schema``);
- ``onnxruntime/``: ONNX Runtime GenAI: the engine, its slots (``batch``) and the build tools run in
  a child process (``tools``);
- ``mlx/``: mlx-lm: the engine and its converter in a child process (``tools``).

What every runtime shares stays here: ``base`` (the protocol, sampling, the registry),
``hf_vocab`` (a Hugging Face tokenizer for folder models), ``slots`` (turn-taking slots for engines
without a batch decoder) and ``spec_sampling`` (speculative sampling's acceptance rule). Engines
register by name in ``base.ENGINES``; ``open_engine`` imports the named one on first use, and each
runtime's package imports nothing itself, so a module that needs one part loads only that.
"""
