"""The ggml Vulkan backend module for step35; step35 finds it through an entry point.

Nothing to import by hand: ``import step35`` loads it when a Vulkan loader is
present, and ``step35 info`` says why not when it is not.
"""

from pathlib import Path

LIB_DIR = Path(__file__).resolve().parent / "lib"


def libraries() -> list[str]:
    """The backend library to load (entry point ``step35.backends: vulkan``)."""
    from step35.plugins import vulkan_libraries

    return vulkan_libraries(LIB_DIR)
