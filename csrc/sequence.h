// One generated sequence's per-token policy, used by the scheduler
// (engine.cpp, also for single-stream generation): the Sampler
// built from SamplingOptions, and TextOutput, which turns sampled tokens into
// text pieces that never split a UTF-8 character and never contain (a prefix
// of) a stop string.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "constraint.h"
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
    std::shared_ptr<Constraint> constraint;  // grammar and/or reasoning budget (none: free text)
};

using Clock = std::chrono::steady_clock;

// How a request ended (Running: not yet). Bound as step35._core.FinishReason, whose names Python gives out.
enum class FinishReason { Running, Stop, Length, Cancelled, Error };

// What one request did, as step35.GenerationStats reads it (filled by engine.cpp). Bound as
// step35._core.Stats.
struct Stats {
    size_t prompt_tokens = 0;
    size_t prompt_tokens_evaluated = 0;
    size_t prompt_tokens_cached = 0;    // served from the cache
    size_t prompt_tokens_restored = 0;  // of the cached: from the host-memory prompt cache
    size_t prompt_tokens_copied = 0;    // of the cached: copied from another slot
    size_t generated_tokens = 0;
    double queue_ms = 0.0;  // waiting for a slot (an engine's requests)
    double prompt_ms = 0.0;
    double generation_ms = 0.0;
    double ttft_ms = 0.0;
    int draft_max = 0;  // MTP tokens drafted per step (0: no drafting; the draft fields are then 0)
    size_t draft_steps = 0, draft_tokens = 0, draft_accepted = 0;
    std::vector<size_t> draft_proposed_by_position, draft_accepted_by_position;
};

// One request's MTP counters.
struct DraftCounts {
    size_t steps = 0, drafted = 0, accepted = 0;
    std::vector<std::pair<size_t, size_t>> by_pos;  // (proposed, accepted) per draft position

    void reset(int draft_max) { by_pos.assign((size_t) std::max(draft_max, 0), {0, 0}); }
    // A step that drafted `n` tokens and kept `kept` of them.
    void step(size_t n, size_t kept) {
        if (n == 0) return;
        ++steps;
        drafted += n;
        accepted += kept;
        for (size_t i = 0; i < n && i < by_pos.size(); ++i) {
            ++by_pos[i].first;
            if (i < kept) ++by_pos[i].second;
        }
    }
    void fill(Stats & st, int draft_max) const {
        st.draft_max = draft_max;
        st.draft_steps = steps;
        st.draft_tokens = drafted;
        st.draft_accepted = accepted;
        st.draft_proposed_by_position.clear();
        st.draft_accepted_by_position.clear();
        for (const auto & p : by_pos) {
            st.draft_proposed_by_position.push_back(p.first);
            st.draft_accepted_by_position.push_back(p.second);
        }
    }
};

inline double ms_between(Clock::time_point t0, Clock::time_point t1) {
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

// One sequence's sampler: llama.cpp's sampler chain for `o` (penalties, then
// greedy or top-k, top-p, min-p, temperature and the seeded draw); the
// prompt's tail primes the penalties. Without penalties it skips the copy of
// the whole vocabulary that llama_sampler_sample makes for every token:
// greedy is an argmax over the logits, and a top-k chain is handed only the
// k best candidates, which is all its top-k step would keep. The token drawn
// is the chain's own (the same candidates in the same order, up to exact ties
// at the k-th logit).
//
// With a Constraint, it samples as llama.cpp's common_sampler does: the
// reasoning budget first (it forces the end of reasoning once the budget is
// spent), then the token is drawn as above and checked against the grammar;
// only a rejected token makes it apply the grammar to the whole vocabulary and
// draw again. A lazy grammar (a chat answer's) is not applied while the model
// reasons, and holds from the end of reasoning to the end.
class Sampler {
public:
    Sampler(const SamplingOptions & o, const llama_vocab * vocab, const std::vector<llama_token> & prompt);
    ~Sampler();
    Sampler(const Sampler &) = delete;
    Sampler & operator=(const Sampler &) = delete;

    // Draw the next token from the logits of batch row `idx` (-1: the last) and accept it.
    // Throws GrammarError when the grammar leaves no token to choose.
    llama_token sample(llama_context * ctx, int32_t idx);

private:
    llama_token draw(llama_context * ctx, int32_t idx);  // the chain's choice, not yet accepted
    llama_token draw_all(llama_context * ctx, int32_t idx, bool grammar);  // over the whole vocabulary
    bool grammar_applies() const;
    bool budget_on() const;
    bool grammar_allows(llama_token tok);
    void accept(llama_token tok, bool grammar);
    void accept_grammar(llama_token tok);

    llama_sampler * chain_ = nullptr;
    llama_sampler * grammar_ = nullptr;  // cloned from the Constraint
    llama_sampler * budget_ = nullptr;   // cloned from the Constraint
    bool lazy_ = false;
    bool answer_started_ = false;  // a lazy grammar's answer began: the budget has no more say
    int32_t n_vocab_ = 0;
    bool argmax_ = false;  // greedy without penalties
    int32_t top_k_ = 0;    // > 0: top-k without penalties, candidates preselected here
    std::vector<llama_token_data> cand_;
};

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
    // The stop string that ended the text ("" while none has appeared).
    const std::string & matched() const { return matched_; }

private:
    std::vector<std::string> stop_;
    std::string matched_;
    size_t max_stop_ = 0;
    bool render_special_;
    std::string pending_;
};

// Python str from UTF-8 bytes (invalid bytes replaced; GIL held).
pybind11::str decode_utf8(const std::string & s);

}  // namespace step35
