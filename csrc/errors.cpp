#include "errors.h"

#include <pybind11/stl.h>

#include <map>

#include "ggml.h"
#include "log.h"

namespace py = pybind11;

namespace step35 {

namespace {
// The Python class of each kind, registered once by step35 when it imports this module
// (register_error_classes). Never destroyed: a translator may run late in interpreter shutdown.
std::map<ErrorKind, py::object> & error_classes() {
    static auto * classes = new std::map<ErrorKind, py::object>();
    return *classes;
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
    // The one list of kinds: step35.errors has a class of each name, checked when it registers them.
    py::enum_<ErrorKind>(m, "ErrorKind", "The kinds of native errors (step35.errors has a class of each name).")
        .value("Step35Error", ErrorKind::Step35Error)
        .value("ModelLoadError", ErrorKind::ModelLoadError)
        .value("BackendLoadError", ErrorKind::BackendLoadError)
        .value("ClosedError", ErrorKind::ClosedError)
        .value("TokenizeError", ErrorKind::TokenizeError)
        .value("Cancelled", ErrorKind::Cancelled)
        .value("ContextError", ErrorKind::ContextError)
        .value("ContextBusyError", ErrorKind::ContextBusyError)
        .value("ContextOverflowError", ErrorKind::ContextOverflowError)
        .value("DecodeError", ErrorKind::DecodeError)
        .value("QuantizeError", ErrorKind::QuantizeError)
        .value("QueueFullError", ErrorKind::QueueFullError)
        .value("GrammarError", ErrorKind::GrammarError)
        .value("RPCError", ErrorKind::RPCError)
        .value("InvalidModelError", ErrorKind::InvalidModelError);
    m.def(
        "register_error_classes",
        [](const std::map<ErrorKind, py::object> & classes) {
            for (const auto & [kind, cls] : classes) {
                if (!PyType_Check(cls.ptr()) || !PyObject_IsSubclass(cls.ptr(), PyExc_Exception))
                    throw py::type_error("error classes must be Exception subclasses");
                error_classes()[kind] = cls;
            }
        },
        py::arg("classes"), "The Python exception class of each ErrorKind (step35 registers its own at import).");
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error & e) {
            // Paths and log lines need not be valid UTF-8: decode with replacement.
            const std::string what = e.what();
            py::object msg = py::reinterpret_steal<py::object>(
                PyUnicode_DecodeUTF8(what.data(), (Py_ssize_t) what.size(), "replace"));
            auto & classes = error_classes();
            auto it = classes.find(e.kind);
            if (it == classes.end()) it = classes.find(ErrorKind::Step35Error);
            // only before step35 registered its classes (the extension imported on its own)
            PyObject * cls = it != classes.end() ? it->second.ptr() : PyExc_RuntimeError;
            PyErr_SetObject(cls, msg.ptr());
        }
    });
}

}  // namespace step35
