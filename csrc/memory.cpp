// Memory accounting: what llama.cpp holds for a context, per buffer type
// (weights, KV cache, compute buffers), and what each device has free. Thin:
// the planning policy lives in step35/fit.py.
#include "memory.h"

#include <pybind11/pybind11.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "context.h"
#include "llama-ext.h"  // llama_get_memory_breakdown (staging API of the pinned llama.cpp)

namespace py = pybind11;

namespace step35 {

void return_free_memory() {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

namespace {

// One dict per buffer type: {buffer_type, device, host, model, context, compute}.
// For a model loaded with no_alloc these are the sizes llama.cpp would allocate.
py::list memory_breakdown(ContextHandle & c) {
    BusyGuard busy(c);
    llama_memory_breakdown mb = llama_get_memory_breakdown(c.get());
    py::list out;
    for (const auto & [buft, data] : mb) {
        py::dict d;
        d["buffer_type"] = ggml_backend_buft_name(buft);
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        d["device"] = dev ? py::object(py::str(ggml_backend_dev_name(dev))) : py::object(py::none());
        d["host"] = ggml_backend_buft_is_host(buft);
        d["model"] = data.model;
        d["context"] = data.context;
        d["compute"] = data.compute;
        out.append(d);
    }
    return out;
}

}  // namespace

void register_memory(py::module_ & m) {
    m.def("memory_breakdown", &memory_breakdown, py::arg("context"),
          "Bytes llama.cpp holds (or, for a no_alloc model, would allocate) per buffer type: "
          "model (weights), context (KV cache), compute (scratch buffers).");
}

}  // namespace step35
