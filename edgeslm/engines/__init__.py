"""Engines: one ``Engine`` protocol (``base``) and the runtimes behind it.

Native code is imported only under this package: ``llamacpp`` (llama.cpp through
llama-cpp-python's C API), ``llamacpp_batch`` (continuous batching for the server's runners)
and ``ggml_quants`` (ggml's quantizers and dequantizers). Engines register by name in
``base.ENGINES``; ``open_engine`` loads the named one on first use.
"""
