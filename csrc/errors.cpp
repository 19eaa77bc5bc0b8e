#include "errors.h"

#include "ggml.h"
#include "log.h"

namespace py = pybind11;

namespace step35 {

namespace {
const char * kind_name(ErrorKind k) {
    switch (k) {
        case ErrorKind::ModelLoadError: return "ModelLoadError";
        case ErrorKind::BackendLoadError: return "BackendLoadError";
        case ErrorKind::ClosedError: return "ClosedError";
        case ErrorKind::TokenizeError: return "TokenizeError";
        case ErrorKind::Cancelled: return "Cancelled";
        case ErrorKind::Step35Error: break;
    }
    return "Step35Error";
}
}  // namespace

void fail(ErrorKind kind, const std::string & what, unsigned long long since_mark) {
    std::string msg = what;
    auto lines = log_since(since_mark, GGML_LOG_LEVEL_WARN);
    if (!lines.empty()) {
        msg += "\nllama.cpp said:";
        for (const auto & l : lines) msg += "\n  " + l.text;
    }
    throw Error(kind, msg);
}

void register_errors(py::module_ & m) {
    (void) m;
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error & e) {
            // Paths and log lines need not be valid UTF-8: decode with replacement.
            const std::string what = e.what();
            py::object msg = py::reinterpret_steal<py::object>(
                PyUnicode_DecodeUTF8(what.data(), (Py_ssize_t) what.size(), "replace"));
            py::object cls;
            try {
                cls = py::module_::import("step35.errors").attr(kind_name(e.kind));
            } catch (py::error_already_set &) {
                cls = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
            }
            PyErr_SetObject(cls.ptr(), msg.ptr());
        }
    });
}

}  // namespace step35
