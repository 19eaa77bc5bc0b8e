// Constrained decoding: a grammar (GBNF, e.g. made from a JSON Schema by
// llama.cpp's converter) and a reasoning budget, prepared once and handed to
// every Sampler (sequence.h) that uses them.
//
// A Constraint holds llama.cpp's own samplers in their starting state (the
// grammar sampler, lazy or not; libcommon's reasoning-budget sampler, already
// advanced over the prompt); each generation clones them, so one
// Constraint serves any number of requests, in any thread.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "llama.h"

namespace step35 {

class Constraint {
public:
    // A lazy grammar waits for one of `trigger_patterns` (regexes over the
    // output) and then constrains from the start of the match. The reasoning
    // budget (-1: unlimited) needs the token sequences that open and close
    // reasoning, the sequence forced when it is spent, and the tokens already
    // in the prompt (`reasoning_prefill`), which tell whether the model is
    // reasoning when generation starts. Throws GrammarError with llama.cpp's
    // reason when the grammar does not parse.
    Constraint(const std::shared_ptr<llama_model> & model, const std::string & grammar, bool lazy,
               const std::vector<std::string> & trigger_patterns, int32_t reasoning_budget,
               const std::vector<llama_token> & reasoning_start, const std::vector<std::vector<llama_token>> & reasoning_end,
               const std::vector<llama_token> & reasoning_forced, const std::vector<llama_token> & reasoning_prefill);
    ~Constraint();
    Constraint(const Constraint &) = delete;
    Constraint & operator=(const Constraint &) = delete;

    // Fresh copies in the starting state (nullptr where there is none); the caller frees them.
    llama_sampler * clone_grammar() const;
    llama_sampler * clone_budget() const;
    bool lazy() const { return lazy_; }

    // The tokens the grammar allows after it has taken `prefix` (GrammarError if it rejects
    // one of them), asked of llama.cpp's grammar sampler over the whole vocabulary at once,
    // or (`one_by_one`) a token at a time, as a sampler's one-token check asks; both must
    // agree. A constraint without a grammar is a ValueError.
    std::vector<llama_token> allowed(const std::vector<llama_token> & prefix, bool one_by_one) const;

private:
    std::shared_ptr<llama_model> model_;  // the grammar sampler keeps a pointer to the vocabulary
    llama_sampler * grammar_ = nullptr;
    llama_sampler * budget_ = nullptr;
    bool lazy_ = false;
};

void register_constraint(pybind11::module_ & m);

}  // namespace step35
