"""llama.cpp through llama-cpp-python's C API (see ``engines``); nothing is imported here, so each
part loads only what it needs."""
