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
    // The model whose MTP heads draft for this one (itself when its own file
    // holds them and they were loaded, a sidecar model, or null).
    std::shared_ptr<llama_model> heads() const;
    // Use the heads of `sidecar` (a model loaded from an MTP-only file) for drafting.
    void set_heads(const ModelHandle & sidecar);
    void close();
    bool closed() const;

private:
    mutable std::mutex mu_;
    std::shared_ptr<llama_model> model_;
    std::shared_ptr<llama_model> heads_;
};

// Token ids outside [0, n_vocab) -> ValueError naming the position.
void check_tokens(const llama_vocab * vocab, const llama_token * tokens, size_t n);

void register_model(pybind11::module_ & m);

}  // namespace step35
