"""Tools around a model: the memory plan (:mod:`.fit`), quantization, benchmarks, the Hub, platform
presets and remote (RPC) devices."""
