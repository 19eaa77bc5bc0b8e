// Remote devices through ggml-rpc: connect to workers, run a worker, and
// notice a worker that went away.
//
// Our patch to ggml-rpc (llama.cpp/patches/0003) makes a failed connection a
// recorded failure instead of an abort: replies then read as zeros. So every
// load and decode of a model that uses workers ends with rpc_check(), which
// turns a failure recorded since the model was loaded into RPCError before
// anything reads those zeros.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "llama.h"

namespace step35 {

// Failure counts of `endpoints` now (taken before a load).
struct RpcWatch {
    std::vector<std::string> endpoints;
    std::vector<unsigned long long> failures;
};
RpcWatch rpc_watch_begin(const std::vector<std::string> & endpoints);

// RPCError naming the worker if one of `w`'s endpoints failed since it was taken.
void rpc_watch_check(const RpcWatch & w);

// Remember / forget which workers a loaded model uses.
void rpc_watch_model(const llama_model * model, RpcWatch w);
void rpc_forget_model(const llama_model * model);

// After a decode on a model that uses workers: wait for the result, then
// RPCError if a worker failed. Free (no lock, no wait) for other models.
void rpc_check(llama_context * ctx, const llama_model * model);

void register_rpc(pybind11::module_ & m);

}  // namespace step35
