"""ONNX Runtime GenAI (see ``engines``); nothing is imported here, so each part loads only what it needs."""
