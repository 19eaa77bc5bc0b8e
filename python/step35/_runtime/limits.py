"""Limits that several modules check, each defined once: llama.cpp's C API's, and the server's
request size (light: the CLI reads them without importing the server's dependencies)."""

#: The largest C ``int`` / ``int32_t``: thread counts, top_k, repeat_last_n, batch sizes,
#: positions, n_gpu_layers and main_gpu are of that type on the native side.
INT32_MAX = 2**31 - 1
#: llama.cpp's LLAMA_MAX_SEQ: the most sequences a context holds (the most slots of an engine).
MAX_SEQ = 256
#: The largest request body `step35 serve` takes by default (larger ones get 413).
MAX_BODY_BYTES = 16 * 1024 * 1024
