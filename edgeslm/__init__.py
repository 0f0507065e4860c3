"""edgeslm: small language models on edge devices: store, quantize, evaluate, choose and serve."""

__version__ = "0.1.0"
