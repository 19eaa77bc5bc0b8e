// One generated sequence's per-token policy, shared by the single-stream
// token loop (generate.cpp) and the batching engine (engine.cpp): the sampler
// chain built from SamplingOptions, and TextOutput, which turns sampled
// tokens into text pieces that never split a UTF-8 character and never
// contain (a prefix of) a stop string.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "llama.h"

namespace step35 {

struct SamplingOptions {
    float temperature = 0.8f;  // 0 = greedy
    int32_t top_k = 40;        // 0 = off
    float top_p = 0.95f;       // 1 = off
    float min_p = 0.05f;       // 0 = off
    float repeat_penalty = 1.0f;
    int32_t repeat_last_n = 64;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    uint32_t seed = LLAMA_DEFAULT_SEED;
};

// A new sampler chain for `o`; the prompt's tail primes the penalties. Free with llama_sampler_free.
llama_sampler * make_sampler(const SamplingOptions & o, const llama_vocab * vocab,
                             const std::vector<llama_token> & prompt);

// Text of the generated tokens, held back while it could still be cut by a stop string.
class TextOutput {
public:
    // Empty stop strings are a ValueError.
    TextOutput(std::vector<std::string> stop, bool render_special);

    // Append the piece of `tok`; true when a stop string appeared (the text is cut before it).
    bool append(const llama_vocab * vocab, llama_token tok);
    // Bytes that can be handed out now (complete characters, not a possible stop prefix).
    size_t ready() const;
    std::string take_ready();
    std::string take_all();

private:
    std::vector<std::string> stop_;
    size_t max_stop_ = 0;
    bool render_special_;
    std::string pending_;
};

// Python str from UTF-8 bytes (invalid bytes replaced; GIL held).
pybind11::str decode_utf8(const std::string & s);

}  // namespace step35
