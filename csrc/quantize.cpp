// llama.cpp's quantizer (llama_model_quantize), GIL released. Type names,
// path checks and the write-to-temporary-then-rename policy live in
// step35/tools/quantize.py.
#include <pybind11/pybind11.h>

#include <string>

#include "errors.h"
#include "llama.h"
#include "log.h"

namespace py = pybind11;

namespace step35 {

namespace {

void quantize(const std::string & src, const std::string & dst, int ftype, int nthread, bool allow_requantize,
              bool quantize_output_tensor, bool pure, bool keep_split) {
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = (llama_ftype) ftype;
    p.nthread = nthread;
    p.allow_requantize = allow_requantize;
    p.quantize_output_tensor = quantize_output_tensor;
    p.pure = pure;
    p.keep_split = keep_split;
    auto mark = log_mark();
    uint32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = llama_model_quantize(src.c_str(), dst.c_str(), &p);
    }
    if (rc != 0) fail(ErrorKind::QuantizeError, "llama.cpp could not quantize " + src, mark);
}

}  // namespace

void register_quantize(py::module_ & m) {
    m.def("quantize", &quantize, py::arg("src"), py::arg("dst"), py::arg("ftype"), py::arg("nthread") = 0,
          py::arg("allow_requantize") = false, py::arg("quantize_output_tensor") = true, py::arg("pure") = false,
          py::arg("keep_split") = false, "Quantize a GGUF with llama_model_quantize (GIL released).");
}

}  // namespace step35
