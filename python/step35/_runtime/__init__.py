"""The runtime under the API: the native extension, its backends and plugins, the host, shipped data.

Nothing here imports the modules above it (model, engine, tools, serving).
"""
