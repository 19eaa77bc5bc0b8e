// A loaded llama_model, shared by everything that uses it.
//
// ModelHandle owns a shared_ptr<llama_model>: close() drops the handle's
// reference (deterministic, thread-safe, idempotent); objects created from the
// model later (contexts) hold their own reference so the weights stay alive
// until the last user is gone.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <mutex>

#include "llama.h"

namespace step35 {

class ModelHandle {
public:
    explicit ModelHandle(std::shared_ptr<llama_model> m) : model_(std::move(m)) {}
    // The model, or ClosedError.
    std::shared_ptr<llama_model> get() const;
    void close();
    bool closed() const;

private:
    mutable std::mutex mu_;
    std::shared_ptr<llama_model> model_;
};

// Token ids outside [0, n_vocab) -> ValueError naming the position.
void check_tokens(const llama_vocab * vocab, const llama_token * tokens, size_t n);

void register_model(pybind11::module_ & m);

}  // namespace step35
