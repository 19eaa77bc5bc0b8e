// step35._core: the thin binding over llama.cpp. One file per concept;
// each registers its part here.
#include <pybind11/pybind11.h>

#include "errors.h"
#include "llama.h"
#include "log.h"

namespace py = pybind11;

namespace step35 {
void register_backends(py::module_ & m);
void register_model(py::module_ & m);
void register_context(py::module_ & m);
void register_sequence(py::module_ & m);
void register_quantize(py::module_ & m);
void register_bench(py::module_ & m);
void register_memory(py::module_ & m);
void register_engine(py::module_ & m);
void register_constraint(py::module_ & m);
void register_rpc(py::module_ & m);
}  // namespace step35

PYBIND11_MODULE(_core, m) {
    m.doc() = "Native binding of step35 over the pinned llama.cpp (use the step35 package, not this).";
    m.attr("__version__") = STEP35_VERSION;
    m.attr("LLAMA_COMMIT") = STEP35_LLAMA_COMMIT;
    step35::register_errors(m);
    step35::register_log(m);
    step35::register_backends(m);
    step35::register_model(m);
    step35::register_context(m);
    step35::register_sequence(m);
    step35::register_quantize(m);
    step35::register_bench(m);
    step35::register_memory(m);
    step35::register_engine(m);
    step35::register_constraint(m);
    step35::register_rpc(m);
    m.def("backend_init", [] {
        py::gil_scoped_release nogil;
        llama_backend_init();
    }, "Initialize llama.cpp (call after the backends are loaded).");
    m.def("system_info", [] { return std::string(llama_print_system_info()); });
}
