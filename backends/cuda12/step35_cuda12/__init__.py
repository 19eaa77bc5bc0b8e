"""The ggml CUDA backend module for step35 (CUDA 12); step35 finds it through an entry point.

Nothing to import by hand: ``import step35`` loads it when an NVIDIA driver
and the CUDA 12 runtime are present, and ``step35 info`` says why not when not.
"""

from pathlib import Path

LIB_DIR = Path(__file__).resolve().parent / "lib"
CUDA_MAJOR = 12


def libraries() -> list[str]:
    """The backend library to load (entry point ``step35.backends: cuda``)."""
    from step35.plugins import cuda_libraries

    return cuda_libraries(LIB_DIR, CUDA_MAJOR)
