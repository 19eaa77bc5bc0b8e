// Multi-token prediction (MTP): drafting with Step 3.5's own NextN heads.
//
// A Drafter owns the draft context (a llama.cpp context of type MTP over the
// model whose heads it runs: the target model itself, or a sidecar file that
// holds only the heads) and llama-common's speculative driver
// (common_speculative_*, "draft-mtp", one head per draft position as
// llama-server runs Step 3.5). It follows every sequence of its target
// context, as llama-server's driver follows its slots: the draft context has
// the target's sequences, and every batch decoded into the target is handed to
// process() (each sequence's tokens contiguous in it, as the driver requires),
// which builds the heads' own KV cache from the target's hidden states. The
// sequences that draft in a step are drafted together (draft()), and their
// verification rows join that step's target batch. Verification (sampling the
// target at every drafted position and keeping the drafts up to the first
// mismatch) is the scheduler's (engine.cpp), also for single-stream
// generation, which is one engine slot over sequence 0.
#pragma once

#include <memory>
#include <vector>

#include "llama.h"

struct common_speculative;
struct common_batch;

namespace step35 {

class Drafter {
public:
    // `heads`: the model holding the NextN blocks (loaded with load_mtp);
    // `target`: the context drafted for. The draft context has the target's
    // size, sequences, batch sizes, threads and attention settings.
    // Throws step35 Error (ContextError) when llama.cpp refuses either part.
    Drafter(std::shared_ptr<llama_model> heads, llama_context * target, llama_flash_attn_type flash_attn, bool kv_unified,
            bool (*abort)(void *), void * abort_data);
    ~Drafter();
    Drafter(const Drafter &) = delete;
    Drafter & operator=(const Drafter &) = delete;

    llama_context * context() const { return ctx_; }
    const llama_model * heads_model() const { return heads_.get(); }
    // Most tokens one draft can hold (the number of heads, at most 3).
    int n_max() const { return n_heads_; }
    // Draft `n` tokens per step from now on (1..n_max()).
    void set_draft(int n);

    // The whole target batch just decoded (several sequences, each contiguous). False on failure.
    bool process(const llama_batch & batch);

    // One sequence's draft: up to `n` tokens following `last` (the sampled
    // token not yet in the target, at position `pos0`); `history` holds the
    // target's tokens of that sequence before it.
    struct Want {
        llama_seq_id seq;
        llama_token last;
        llama_pos pos0;
        int n;
        const std::vector<llama_token> * history;
        std::vector<llama_token> * out;
    };
    // Draft for every sequence in `wants` at once (one pass of the heads per draft position).
    void draft(const std::vector<Want> & wants);
    // `n` drafted tokens of `seq` were accepted by the target after its last draft.
    void accept(int n, llama_seq_id seq = 0);
    // Drop sequence `seq`'s part of the heads' cache from position `pos` on (all of it for 0).
    void remove_from(llama_pos pos, llama_seq_id seq = 0);
    // Drop the whole heads' cache.
    void clear();

    // Whether the heads' cache follows the target's sequence 0 (false after a
    // decode into the target that bypassed process(): a single-stream
    // generation without drafting, or ContextHandle::decode).
    bool synced = false;

private:
    std::shared_ptr<llama_model> heads_;
    llama_context * target_ = nullptr;
    llama_context * ctx_ = nullptr;
    common_speculative * spec_ = nullptr;
    std::unique_ptr<common_batch> batch_;
    uint32_t n_seq_ = 1;
    int n_heads_ = 0;  // heads usable for drafting (at most 3)
    int n_max_ = 0;    // the driver's draft length

    void init_driver(int n_max);
};

}  // namespace step35
