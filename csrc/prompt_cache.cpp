#include "prompt_cache.h"

#include <algorithm>

namespace step35 {

namespace {
size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
}
}  // namespace

void PromptCache::drop(size_t i) {
    bytes_ -= entries_[i].state.size();
    entries_.erase(entries_.begin() + (long) i);
}

bool PromptCache::save(llama_context * ctx, llama_seq_id seq, const std::vector<llama_token> & tokens) {
    if (tokens.empty() || max_bytes_ == 0) return false;
    for (size_t i = 0; i < entries_.size();) {
        const size_t lcp = common_prefix(entries_[i].tokens, tokens);
        if (lcp == tokens.size()) {  // already held, with as much or more
            entries_[i].last_use = ++clock_;
            return false;
        }
        if (lcp == entries_[i].tokens.size()) {  // an older, shorter state of this conversation
            drop(i);
            continue;
        }
        ++i;
    }
    const size_t size = llama_state_seq_get_size_ext(ctx, seq, LLAMA_STATE_SEQ_FLAGS_NONE);
    if (size == 0 || size > max_bytes_) return false;
    while (!entries_.empty() && bytes_ + size > max_bytes_) {
        size_t oldest = 0;
        for (size_t i = 1; i < entries_.size(); ++i)
            if (entries_[i].last_use < entries_[oldest].last_use) oldest = i;
        drop(oldest);
    }
    Entry e;
    e.tokens = tokens;
    e.state.resize(size);
    const size_t got = llama_state_seq_get_data_ext(ctx, e.state.data(), size, seq, LLAMA_STATE_SEQ_FLAGS_NONE);
    if (got == 0) return false;
    e.state.resize(got);
    e.last_use = ++clock_;
    bytes_ += e.state.size();
    entries_.push_back(std::move(e));
    return true;
}

std::pair<int, size_t> PromptCache::best(const std::vector<llama_token> & prompt) const {
    int best = -1;
    size_t best_lcp = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
        const size_t lcp = common_prefix(entries_[i].tokens, prompt);
        if (lcp > best_lcp) {
            best = (int) i;
            best_lcp = lcp;
        }
    }
    return {best, best_lcp};
}

bool PromptCache::restore(llama_context * ctx, llama_seq_id seq, size_t i, std::vector<llama_token> * tokens) {
    Entry & e = entries_[i];
    e.last_use = ++clock_;
    if (llama_state_seq_set_data_ext(ctx, e.state.data(), e.state.size(), seq, LLAMA_STATE_SEQ_FLAGS_NONE) == 0) {
        llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
        drop(i);
        return false;
    }
    *tokens = e.tokens;
    return true;
}

}  // namespace step35
