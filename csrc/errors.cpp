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
        case ErrorKind::ContextError: return "ContextError";
        case ErrorKind::ContextBusyError: return "ContextBusyError";
        case ErrorKind::ContextOverflowError: return "ContextOverflowError";
        case ErrorKind::DecodeError: return "DecodeError";
        case ErrorKind::QuantizeError: return "QuantizeError";
        case ErrorKind::QueueFullError: return "QueueFullError";
        case ErrorKind::GrammarError: return "GrammarError";
        case ErrorKind::RPCError: return "RPCError";
        case ErrorKind::InvalidModelError: return "InvalidModelError";
        case ErrorKind::Step35Error: break;
    }
    return "Step35Error";
}
}  // namespace

void fail(ErrorKind kind, const std::string & what, unsigned long long since_mark) {
    std::string msg = what;
    auto lines = log_since(since_mark, GGML_LOG_LEVEL_WARN);
    if (!lines.empty()) {
        // The last lines carry the reason; a long run of warnings before them
        // (e.g. one per tensor while quantizing) is summarized.
        constexpr size_t kKeep = 12;
        msg += "\nllama.cpp said:";
        size_t first = 0;
        if (lines.size() > kKeep) {
            first = lines.size() - kKeep;
            msg += "\n  ... (" + std::to_string(first) + " earlier lines; STEP35_LOG_LEVEL=warn shows them all)";
        }
        for (size_t i = first; i < lines.size(); ++i) msg += "\n  " + lines[i].text;
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
