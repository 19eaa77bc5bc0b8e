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

size_t servable(size_t lcp, llama_pos pos_min, const Checkpoints & checkpoints, llama_pos n_swa) {
    if (lcp == 0 || n_swa <= 0 || pos_min <= std::max<llama_pos>(0, (llama_pos) lcp - n_swa)) return lcp;
    const Checkpoint * c = checkpoints.at_or_before(lcp);
    return c ? c->n : 0;
}

void Checkpoints::take(llama_context * ctx, llama_seq_id seq, size_t n, size_t max) {
    if (max == 0 || (!items.empty() && items.back().n >= n)) return;
    const size_t size = llama_state_seq_get_size_ext(ctx, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    if (size == 0) return;
    Checkpoint c;
    c.n = n;
    c.swa.resize(size);
    const size_t got = llama_state_seq_get_data_ext(ctx, c.swa.data(), size, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    if (got == 0) return;
    c.swa.resize(got);
    items.push_back(std::move(c));
    while (items.size() > max) {  // drop the one closest to its predecessor, never the newest
        size_t drop = 0;
        for (size_t i = 1; i + 1 < items.size(); ++i)
            if (drop == 0 || items[i].n - items[i - 1].n < items[drop].n - items[drop - 1].n) drop = i;
        items.erase(items.begin() + (long) drop);
    }
}

void Checkpoints::cut(size_t n) {
    while (!items.empty() && items.back().n > n) items.pop_back();
}

const Checkpoint * Checkpoints::at_or_before(size_t n) const {
    for (size_t i = items.size(); i-- > 0;)
        if (items[i].n <= n) return &items[i];
    return nullptr;
}

size_t Checkpoints::bytes() const {
    size_t total = 0;
    for (const auto & c : items) total += c.swa.size();
    return total;
}

bool restore_checkpoint(llama_context * ctx, llama_seq_id seq, const Checkpoint & c) {
    if (!llama_memory_seq_rm(llama_get_memory(ctx), seq, (llama_pos) c.n, -1)) return false;
    return llama_state_seq_set_data_ext(ctx, c.swa.data(), c.swa.size(), seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != 0;
}

void PromptCache::drop(size_t i) {
    bytes_ -= entries_[i].bytes();
    entries_.erase(entries_.begin() + (long) i);
}

bool PromptCache::save(llama_context * ctx, llama_seq_id seq, const std::vector<llama_token> & tokens,
                       const Checkpoints & checkpoints) {
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
    const size_t total = size + checkpoints.bytes();
    if (size == 0 || total > max_bytes_) return false;
    while (!entries_.empty() && bytes_ + total > max_bytes_) {
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
    e.pos_min = llama_memory_seq_pos_min(llama_get_memory(ctx), seq);
    e.checkpoints = checkpoints;
    e.last_use = ++clock_;
    bytes_ += e.bytes();
    entries_.push_back(std::move(e));
    return true;
}

std::pair<int, size_t> PromptCache::best(const std::vector<llama_token> & prompt, llama_pos n_swa) const {
    int best = -1;
    size_t best_lcp = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
        const size_t lcp = servable(std::min(common_prefix(entries_[i].tokens, prompt), prompt.size() - 1),
                                    entries_[i].pos_min, entries_[i].checkpoints, n_swa);
        if (lcp > best_lcp) {
            best = (int) i;
            best_lcp = lcp;
        }
    }
    return {best, best_lcp};
}

bool PromptCache::restore(llama_context * ctx, llama_seq_id seq, size_t i, std::vector<llama_token> * tokens,
                          Checkpoints * checkpoints) {
    Entry & e = entries_[i];
    e.last_use = ++clock_;
    if (llama_state_seq_set_data_ext(ctx, e.state.data(), e.state.size(), seq, LLAMA_STATE_SEQ_FLAGS_NONE) == 0) {
        llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
        drop(i);
        return false;
    }
    *tokens = e.tokens;
    *checkpoints = e.checkpoints;
    return true;
}

}  // namespace step35
