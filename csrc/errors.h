// One helper turns llama.cpp failures into typed Python exceptions.
//
// Native code throws step35::Error{kind, message}; the translator registered
// in register_errors() raises the Python class of the same name from
// step35.errors (imported lazily, with the GIL held). The message carries the
// error lines llama.cpp logged during the failing call (see log.h).
#pragma once

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace step35 {

enum class ErrorKind {
    Step35Error,       // generic native failure
    ModelLoadError,    // llama_model_load_* returned NULL
    BackendLoadError,  // ggml_backend_load failed
    ClosedError,       // use after close()
    TokenizeError,     // llama_tokenize / detokenize failed
    Cancelled,         // a callback asked to stop (the Python exception is re-raised instead when there is one)
    ContextError,          // llama_init_from_model failed
    ContextBusyError,      // a context is already used by another call
    ContextOverflowError,  // the input does not fit in n_ctx
    DecodeError,           // llama_decode failed
    QuantizeError,         // llama_model_quantize failed
    QueueFullError,        // the engine's wait queue is full
    GrammarError,          // a grammar or JSON Schema that cannot be used
    RPCError,              // an RPC worker cannot be reached, speaks another protocol, or went away
    InvalidModelError,     // a file that cannot serve as asked (e.g. an MTP sidecar of another model)
};

struct Error : std::runtime_error {
    ErrorKind kind;
    Error(ErrorKind k, const std::string & msg) : std::runtime_error(msg), kind(k) {}
};

// Throw `kind` with `what`, followed by llama.cpp's error log lines recorded
// since `log_mark` (pass log_mark() taken before the failing call).
[[noreturn]] void fail(ErrorKind kind, const std::string & what, unsigned long long since_mark);

void register_errors(pybind11::module_ & m);

}  // namespace step35
