// Conversations saved from an engine's slots to host memory (llama-server's --cache-ram).
//
// When a slot is given to a request that does not extend the conversation it
// holds, that conversation's sequence state (every layer's cache, the
// sliding-window layers included) is copied here first; a later request that
// extends it gets it restored into a slot, and evaluates only its new tokens.
// Least recently used entries go first once the bound is reached.
//
// Checkpoints: the state of a sequence's sliding-window layers after its first
// n tokens (llama-server's context checkpoints). The window layers of a
// sequence hold only the last window, so a request that shares a prefix with
// it can reuse that prefix only if the window before the prefix's end is
// still there; a checkpoint at or before the end restores that window.
#pragma once

#include <llama.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace step35 {

struct Checkpoint {
    size_t n = 0;               // tokens of the sequence the state follows
    std::vector<uint8_t> swa;   // the sliding-window layers' state (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
};

// The checkpoints of one sequence, in order of n, at most `max` (thinned where they are densest).
struct Checkpoints {
    std::vector<Checkpoint> items;

    // Take one after the first `n` tokens of `seq` (nothing when one is there already).
    void take(llama_context * ctx, llama_seq_id seq, size_t n, size_t max);
    // Drop those past `n` tokens (the sequence was cut there).
    void cut(size_t n);
    // The last one at or before `n` tokens, or null.
    const Checkpoint * at_or_before(size_t n) const;
    size_t bytes() const;
};

// How much of a sequence's common prefix with a prompt (`lcp` tokens) it can serve: all of it when its
// window layers (oldest position `pos_min`, window `n_swa`, 0 = none) still hold the window before it,
// else up to its last checkpoint at or before `lcp` (0 without one).
size_t servable(size_t lcp, llama_pos pos_min, const Checkpoints & checkpoints, llama_pos n_swa);

// Restore checkpoint `c` into `seq`: positions from c.n on are removed, the window layers set as they were.
bool restore_checkpoint(llama_context * ctx, llama_seq_id seq, const Checkpoint & c);

class PromptCache {
public:
    explicit PromptCache(size_t max_bytes) : max_bytes_(max_bytes) {}

    // Save sequence `seq` of `ctx`, which holds `tokens` at positions 0..n-1. An entry that is a
    // prefix of `tokens` is replaced; nothing is saved when an entry already holds `tokens` (or
    // more), or when the state is larger than the bound. Returns whether it was saved. Entries may
    // be dropped and reordered: indices from best() are stale after a save.
    bool save(llama_context * ctx, llama_seq_id seq, const std::vector<llama_token> & tokens,
              const Checkpoints & checkpoints);

    // The entry that can serve the longest prefix of `prompt` (index, tokens it serves); (-1, 0) if
    // none. An entry serves its common prefix with the prompt when its window layers still hold the
    // window before it (`n_swa`: the window, 0 = none), else up to its last checkpoint before that.
    std::pair<int, size_t> best(const std::vector<llama_token> & prompt, llama_pos n_swa) const;

    // Restore entry `i` into `seq` (which must be empty); its tokens go to `tokens`. False when
    // llama.cpp refused the state (the sequence is then left empty).
    bool restore(llama_context * ctx, llama_seq_id seq, size_t i, std::vector<llama_token> * tokens,
                 Checkpoints * checkpoints);

    size_t bytes() const { return bytes_; }
    size_t entries() const { return entries_.size(); }
    size_t max_bytes() const { return max_bytes_; }

private:
    struct Entry {
        std::vector<llama_token> tokens;
        std::vector<uint8_t> state;
        llama_pos pos_min = 0;  // the oldest position its window layers hold
        Checkpoints checkpoints;
        uint64_t last_use = 0;
        size_t bytes() const { return state.size() + checkpoints.bytes(); }
    };
    void drop(size_t i);

    size_t max_bytes_;
    size_t bytes_ = 0;
    uint64_t clock_ = 0;
    std::vector<Entry> entries_;
};

}  // namespace step35
