// Memory accounting: what llama.cpp holds for a context, per buffer type
// (weights, KV cache, compute buffers), and what each device has free. Thin:
// the planning policy lives in step35/tools/fit.py.
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
void add_rows(py::list & out, llama_context * ctx, bool mtp, bool weights) {
    llama_memory_breakdown mb = llama_get_memory_breakdown(ctx);
    for (const auto & [buft, data] : mb) {
        py::dict d;
        d["buffer_type"] = ggml_backend_buft_name(buft);
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        d["device"] = dev ? py::object(py::str(ggml_backend_dev_name(dev))) : py::object(py::none());
        d["host"] = ggml_backend_buft_is_host(buft);
        d["model"] = weights ? data.model : 0;
        d["context"] = data.context;
        d["compute"] = data.compute;
        d["mtp"] = mtp;
        out.append(d);
    }
}

// One dict per buffer type and context: {buffer_type, device, host, model,
// context, compute, mtp}. For a model loaded with no_alloc these are the sizes
// llama.cpp would allocate. Rows with mtp=True are the MTP draft context's (its
// KV cache and compute buffers, and the weights of a sidecar's heads; heads in
// the model's own file are in the model's rows).
py::list memory_breakdown(ContextHandle & c) {
    BusyGuard busy(c);
    py::list out;
    add_rows(out, c.get(), false, true);
    if (Drafter * d = c.drafter()) add_rows(out, d->context(), true, d->heads_model() != c.model());
    return out;
}

}  // namespace

void register_memory(py::module_ & m) {
    m.def("memory_breakdown", &memory_breakdown, py::arg("context"),
          "Bytes llama.cpp holds (or, for a no_alloc model, would allocate) per buffer type: "
          "model (weights), context (KV cache), compute (scratch buffers).");
}

}  // namespace step35
