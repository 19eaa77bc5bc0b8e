// Memory accounting (memory.cpp): per-buffer-type breakdowns, and giving
// freed heap memory back to the operating system.
#pragma once

namespace step35 {

// After freeing a model or a context: return the heap's free pages to the OS.
// glibc keeps what llama.cpp frees (its multi-MB buffers come from the heap
// once the dynamic mmap threshold has risen past them), so without this the
// resident size of a process that loads and frees repeatedly climbs by tens
// of MB before it levels off. No-op where the C library has no malloc_trim.
void return_free_memory();

}  // namespace step35
