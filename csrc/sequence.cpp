#include "sequence.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>

#include "errors.h"
#include "reasoning-budget.h"

namespace py = pybind11;

namespace step35 {

Sampler::Sampler(const SamplingOptions & o, const llama_vocab * vocab, const std::vector<llama_token> & prompt)
    : n_vocab_(llama_vocab_n_tokens(vocab)) {
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    chain_ = llama_sampler_chain_init(cp);
    const bool penalties = o.repeat_penalty != 1.0f || o.presence_penalty != 0.0f || o.frequency_penalty != 0.0f;
    if (penalties)
        llama_sampler_chain_add(chain_, llama_sampler_init_penalties(n_vocab_, o.repeat_last_n, o.repeat_penalty,
                                                                     o.frequency_penalty, o.presence_penalty));
    if (o.temperature <= 0.0f) {
        llama_sampler_chain_add(chain_, llama_sampler_init_greedy());
        argmax_ = !penalties;
    } else {
        if (o.top_k > 0) llama_sampler_chain_add(chain_, llama_sampler_init_top_k(o.top_k));
        if (o.top_p < 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_top_p(o.top_p, 1));
        if (o.min_p > 0.0f) llama_sampler_chain_add(chain_, llama_sampler_init_min_p(o.min_p, 1));
        llama_sampler_chain_add(chain_, llama_sampler_init_temp(o.temperature));
        llama_sampler_chain_add(chain_, llama_sampler_init_dist(o.seed));
        if (!penalties && o.top_k > 0 && o.top_k < n_vocab_) top_k_ = o.top_k;
    }
    if (penalties) {
        const size_t k = o.repeat_last_n < 0 ? prompt.size() : std::min(prompt.size(), (size_t) o.repeat_last_n);
        for (size_t i = prompt.size() - k; i < prompt.size(); ++i) llama_sampler_accept(chain_, prompt[i]);
    }
    if (o.constraint) {
        grammar_ = o.constraint->clone_grammar();
        budget_ = o.constraint->clone_budget();
        lazy_ = o.constraint->lazy();
    }
}

Sampler::~Sampler() {
    llama_sampler_free(chain_);
    if (grammar_ != nullptr) llama_sampler_free(grammar_);
    if (budget_ != nullptr) llama_sampler_free(budget_);
}

llama_token Sampler::sample(llama_context * ctx, int32_t idx) {
    if (grammar_ == nullptr && budget_ == nullptr) {
        const llama_token tok = draw(ctx, idx);
        llama_sampler_accept(chain_, tok);
        return tok;
    }
    const bool grammar = grammar_applies();
    const bool forcing = budget_on() && common_reasoning_budget_get_state(budget_) == REASONING_BUDGET_FORCING;
    llama_token tok = LLAMA_TOKEN_NULL;
    if (!forcing) {  // sample first, check after
        tok = draw(ctx, idx);
        if (grammar && !grammar_allows(tok)) tok = LLAMA_TOKEN_NULL;
    }
    if (tok == LLAMA_TOKEN_NULL) tok = draw_all(ctx, idx, grammar);
    accept(tok, grammar);
    return tok;
}

namespace {
// The first of the largest logits, as llama_sampler_init_greedy picks, in one
// pass: 8 lanes each keep their largest value and where they first saw it (a
// loop the compiler vectorizes), then the lane with the largest value wins,
// the first position on a tie. NaNs are never the largest; if every logit is
// NaN the answer is token 0, as before.
llama_token first_of_largest(const float * logits, int32_t n) {
    constexpr int32_t kLanes = 8;
    float lane[kLanes];
    int32_t at[kLanes];
    for (int32_t j = 0; j < kLanes; ++j) {
        lane[j] = -INFINITY;
        at[j] = -1;
    }
    int32_t t = 0;
    for (; t + kLanes <= n; t += kLanes)
        for (int32_t j = 0; j < kLanes; ++j) {
            const bool more = logits[t + j] > lane[j];
            lane[j] = more ? logits[t + j] : lane[j];
            at[j] = more ? t + j : at[j];
        }
    float best = -INFINITY;
    int32_t best_at = -1;
    for (int32_t j = 0; j < kLanes; ++j)
        if (at[j] >= 0 && (lane[j] > best || (lane[j] == best && at[j] < best_at))) {
            best = lane[j];
            best_at = at[j];
        }
    for (; t < n; ++t)
        if (logits[t] > best) {
            best = logits[t];
            best_at = t;
        }
    if (best_at >= 0) return best_at;
    for (t = 0; t < n; ++t)  // every logit is -inf or NaN
        if (logits[t] == -INFINITY) return t;
    return 0;
}
}  // namespace

llama_token Sampler::draw(llama_context * ctx, int32_t idx) {
    const float * logits = (argmax_ || top_k_ > 0) ? llama_get_logits_ith(ctx, idx) : nullptr;
    if (logits == nullptr) return draw_all(ctx, idx, false);
    if (argmax_) return first_of_largest(logits, n_vocab_);
    // The k largest logits: cand_ holds the best k seen so far, `low` is the index of its smallest.
    const size_t k = (size_t) top_k_;
    cand_.clear();
    for (llama_token t = 0; t < (llama_token) k; ++t) cand_.push_back({t, logits[t], 0.0f});
    auto lowest = [this] {
        size_t lo = 0;
        for (size_t i = 1; i < cand_.size(); ++i)
            if (cand_[i].logit < cand_[lo].logit) lo = i;
        return lo;
    };
    size_t low = lowest();
    float threshold = cand_[low].logit;
    for (llama_token t = (llama_token) k; t < n_vocab_; ++t) {
        if (logits[t] <= threshold) continue;
        cand_[low] = {t, logits[t], 0.0f};
        low = lowest();
        threshold = cand_[low].logit;
    }
    llama_token_data_array cur_p = {cand_.data(), cand_.size(), -1, false};
    llama_sampler_apply(chain_, &cur_p);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size) return draw_all(ctx, idx, false);
    return cur_p.data[cur_p.selected].id;
}

// As llama_sampler_sample: every logit, then (when there is one) the reasoning
// budget and the grammar, then the chain.
llama_token Sampler::draw_all(llama_context * ctx, int32_t idx, bool grammar) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) throw Error(ErrorKind::DecodeError, "no logits for batch row " + std::to_string(idx));
    cand_.resize((size_t) n_vocab_);
    for (llama_token t = 0; t < n_vocab_; ++t) cand_[(size_t) t] = {t, logits[t], 0.0f};
    llama_token_data_array cur_p = {cand_.data(), cand_.size(), -1, false};
    if (budget_on()) llama_sampler_apply(budget_, &cur_p);
    if (grammar) llama_sampler_apply(grammar_, &cur_p);
    llama_sampler_apply(chain_, &cur_p);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size ||
        cur_p.data[cur_p.selected].logit == -INFINITY)
        throw Error(ErrorKind::GrammarError,
                    "the grammar allows no token here (the output so far cannot be continued under it)");
    return cur_p.data[cur_p.selected].id;
}

// As common_sampler: a lazy grammar waits while the model reasons. Once the
// answer has started, the grammar holds to the end (a "<think>" inside a JSON
// string is text, not new reasoning).
bool Sampler::grammar_applies() const {
    if (grammar_ == nullptr) return false;
    if (!budget_on() || !lazy_) return true;
    const auto state = common_reasoning_budget_get_state(budget_);
    return state == REASONING_BUDGET_IDLE || state == REASONING_BUDGET_DONE;
}

// The reasoning budget is consulted until a lazy grammar's answer starts.
bool Sampler::budget_on() const { return budget_ != nullptr && !answer_started_; }

bool Sampler::grammar_allows(llama_token tok) {
    llama_token_data one = {tok, 1.0f, 0.0f};
    llama_token_data_array arr = {&one, 1, -1, false};
    llama_sampler_apply(grammar_, &arr);
    return arr.data[0].logit != -INFINITY;
}

void Sampler::accept(llama_token tok, bool grammar) {
    if (budget_on()) {
        llama_sampler_accept(budget_, tok);
        // The end of reasoning starts a lazy grammar (its trigger is the end tag):
        // it is replayed to the grammar, as common_sampler does.
        if (grammar_ != nullptr && !grammar &&
            common_reasoning_budget_get_state(budget_) == REASONING_BUDGET_DONE) {
            if (const llama_tokens * end = common_reasoning_budget_get_end_match(budget_))
                for (llama_token t : *end) accept_grammar(t);
            answer_started_ = lazy_;
        }
    }
    if (grammar) accept_grammar(tok);
    llama_sampler_accept(chain_, tok);
}

void Sampler::accept_grammar(llama_token tok) {
    try {
        llama_sampler_accept(grammar_, tok);
    } catch (const std::exception & e) {
        throw Error(ErrorKind::GrammarError, std::string("the grammar rejected the output: ") + e.what());
    }
}

namespace {
// Bytes at the end of `s` that start a UTF-8 sequence not yet complete.
size_t incomplete_utf8_tail(const std::string & s) {
    const size_t n = s.size();
    for (size_t back = 1; back <= 4 && back <= n; ++back) {
        const unsigned char c = (unsigned char) s[n - back];
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return need > back ? back : 0;
    }
    return 0;
}
}  // namespace

TextOutput::TextOutput(std::vector<std::string> stop, bool render_special)
    : stop_(std::move(stop)), render_special_(render_special) {
    for (const auto & s : stop_) {
        if (s.empty()) throw py::value_error("stop strings must not be empty");
        max_stop_ = std::max(max_stop_, s.size());
    }
}

bool TextOutput::append(const llama_vocab * vocab, llama_token tok) {
    char buf[256];
    int32_t n = llama_token_to_piece(vocab, tok, buf, sizeof(buf), 0, render_special_);
    if (n >= 0) {
        pending_.append(buf, (size_t) n);
    } else {
        std::string big((size_t) -n, '\0');
        n = llama_token_to_piece(vocab, tok, big.data(), (int32_t) big.size(), 0, render_special_);
        if (n > 0) pending_.append(big.data(), (size_t) n);
    }
    if (stop_.empty()) return false;
    size_t best = std::string::npos;
    const std::string * which = nullptr;
    for (const auto & s : stop_) {
        size_t at = pending_.find(s);
        if (at != std::string::npos && at < best) {
            best = at;
            which = &s;
        }
    }
    if (best == std::string::npos) return false;
    matched_ = *which;
    pending_.resize(best);
    return true;
}

size_t TextOutput::ready() const {
    size_t hold = incomplete_utf8_tail(pending_);
    // Hold back the longest tail that could still become a stop string.
    const size_t lim = std::min(pending_.size(), max_stop_ > 0 ? max_stop_ - 1 : 0);
    for (size_t k = lim; k > hold; --k) {
        const char * tail = pending_.data() + pending_.size() - k;
        bool prefix = false;
        for (const auto & s : stop_)
            if (s.size() > k && s.compare(0, k, tail, k) == 0) {
                prefix = true;
                break;
            }
        if (prefix) {
            hold = k;
            break;
        }
    }
    return pending_.size() - hold;
}

std::string TextOutput::take_ready() {
    const size_t n = ready();
    std::string out = pending_.substr(0, n);
    pending_.erase(0, n);
    return out;
}

std::string TextOutput::take_all() {
    std::string out;
    out.swap(pending_);
    return out;
}

py::str decode_utf8(const std::string & s) {
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace"));
}

// The types a request's settings and results cross the binding in.
void register_sequence(py::module_ & m) {
    py::enum_<FinishReason>(m, "FinishReason", "How a request ended (step35 gives Python the lower-case names).")
        .value("running", FinishReason::Running)
        .value("stop", FinishReason::Stop)
        .value("length", FinishReason::Length)
        .value("cancelled", FinishReason::Cancelled)
        .value("error", FinishReason::Error);

    py::class_<Stats>(m, "Stats", "What one request did (read by step35.generation into GenerationStats).")
        .def_readonly("prompt_tokens", &Stats::prompt_tokens)
        .def_readonly("prompt_tokens_evaluated", &Stats::prompt_tokens_evaluated)
        .def_readonly("prompt_tokens_cached", &Stats::prompt_tokens_cached)
        .def_readonly("prompt_tokens_restored", &Stats::prompt_tokens_restored)
        .def_readonly("prompt_tokens_copied", &Stats::prompt_tokens_copied)
        .def_readonly("generated_tokens", &Stats::generated_tokens)
        .def_readonly("queue_ms", &Stats::queue_ms)
        .def_readonly("prompt_ms", &Stats::prompt_ms)
        .def_readonly("generation_ms", &Stats::generation_ms)
        .def_readonly("ttft_ms", &Stats::ttft_ms)
        .def_readonly("draft_max", &Stats::draft_max)
        .def_readonly("draft_steps", &Stats::draft_steps)
        .def_readonly("draft_tokens", &Stats::draft_tokens)
        .def_readonly("draft_accepted", &Stats::draft_accepted)
        .def_readonly("draft_proposed_by_position", &Stats::draft_proposed_by_position)
        .def_readonly("draft_accepted_by_position", &Stats::draft_accepted_by_position);

    py::class_<SamplingOptions>(m, "SamplingOptions", "Sampler settings (validated in step35.generation).")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplingOptions::temperature)
        .def_readwrite("top_k", &SamplingOptions::top_k)
        .def_readwrite("top_p", &SamplingOptions::top_p)
        .def_readwrite("min_p", &SamplingOptions::min_p)
        .def_readwrite("repeat_penalty", &SamplingOptions::repeat_penalty)
        .def_readwrite("repeat_last_n", &SamplingOptions::repeat_last_n)
        .def_readwrite("presence_penalty", &SamplingOptions::presence_penalty)
        .def_readwrite("frequency_penalty", &SamplingOptions::frequency_penalty)
        .def_readwrite("seed", &SamplingOptions::seed)
        .def_readwrite("constraint", &SamplingOptions::constraint);
}

}  // namespace step35
