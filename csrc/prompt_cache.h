// Conversations saved from an engine's slots to host memory (llama-server's --cache-ram).
//
// When a slot is given to a request that does not extend the conversation it
// holds, that conversation's sequence state (every layer's cache, the
// sliding-window layers included) is copied here first; a later request that
// extends it gets it restored into a slot, and evaluates only its new tokens.
// Least recently used entries go first once the bound is reached.
#pragma once

#include <llama.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace step35 {

class PromptCache {
public:
    explicit PromptCache(size_t max_bytes) : max_bytes_(max_bytes) {}

    // Save sequence `seq` of `ctx`, which holds `tokens` at positions 0..n-1. An entry that is a
    // prefix of `tokens` is replaced; nothing is saved when an entry already holds `tokens` (or
    // more), or when the state is larger than the bound. Returns whether it was saved. Entries may
    // be dropped and reordered: indices from best() are stale after a save.
    bool save(llama_context * ctx, llama_seq_id seq, const std::vector<llama_token> & tokens);

    // The entry sharing the longest prefix with `prompt`: (index, common prefix); (-1, 0) if none.
    std::pair<int, size_t> best(const std::vector<llama_token> & prompt) const;

    // Restore entry `i` into `seq` (which must be empty); its tokens go to `tokens`. False when
    // llama.cpp refused the state (the sequence is then left empty).
    bool restore(llama_context * ctx, llama_seq_id seq, size_t i, std::vector<llama_token> * tokens);

    size_t bytes() const { return bytes_; }
    size_t entries() const { return entries_.size(); }
    size_t max_bytes() const { return max_bytes_; }

private:
    struct Entry {
        std::vector<llama_token> tokens;
        std::vector<uint8_t> state;
        uint64_t last_use = 0;
    };
    void drop(size_t i);

    size_t max_bytes_;
    size_t bytes_ = 0;
    uint64_t clock_ = 0;
    std::vector<Entry> entries_;
};

}  // namespace step35
