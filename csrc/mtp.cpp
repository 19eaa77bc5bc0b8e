// The MTP drafter: a draft context of type MTP plus llama-common's speculative
// driver, set up as llama-server sets it up for `--spec-type draft-mtp`.
#include "mtp.h"

#include <algorithm>

#include "common.h"
#include "errors.h"
#include "log.h"
#include "speculative.h"

namespace step35 {

Drafter::Drafter(std::shared_ptr<llama_model> heads, llama_context * target, llama_flash_attn_type flash_attn, bool kv_unified,
                 bool (*abort)(void *), void * abort_data)
    : heads_(std::move(heads)), target_(target), n_seq_(llama_n_seq_max(target)) {
    const int n_heads = llama_model_n_layer_nextn(heads_.get());
    if (n_heads <= 0) throw Error(ErrorKind::ContextError, "the model has no MTP heads loaded");
    llama_context_params p = llama_context_default_params();
    p.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    p.ctx_other = target;
    p.n_ctx = llama_n_ctx(target);
    p.n_batch = llama_n_batch(target);
    p.n_ubatch = llama_n_ubatch(target);
    // the target's sequences, one output row each per draft pass (llama-server's
    // common_speculative_get_output_limits for draft-mtp: n_parallel rows, 1 per sequence)
    p.n_seq_max = n_seq_;
    p.kv_unified = kv_unified;
    p.n_rs_seq = 0;
    p.n_outputs_max = n_seq_;
    p.n_outputs_max_per_seq = 1;
    p.n_threads = llama_n_threads(target);
    p.n_threads_batch = llama_n_threads_batch(target);
    p.flash_attn_type = flash_attn;  // as the target's; the cache stays F16 (llama.cpp's draft default)
    p.no_perf = true;
    p.abort_callback = abort;
    p.abort_callback_data = abort_data;
    ctx_ = llama_init_from_model(heads_.get(), p);
    if (!ctx_) throw Error(ErrorKind::ContextError, "llama.cpp could not create the MTP draft context");

    n_heads_ = std::min(n_heads, 3);
    batch_ = std::make_unique<common_batch>(target);
    try {
        init_driver(n_heads_);
    } catch (...) {
        llama_free(ctx_);  // no destructor runs for a constructor that throws
        throw;
    }
}

void Drafter::init_driver(int n_max) {
    // the old driver goes first: freeing it detaches its sampler from the draft context
    if (spec_) common_speculative_free(spec_);
    spec_ = nullptr;
    n_max_ = 0;
    common_params_speculative sp;
    sp.types = {COMMON_SPECULATIVE_TYPE_DRAFT_MTP};
    sp.draft.ctx_tgt = target_;
    sp.draft.ctx_dft = ctx_;
    sp.draft.n_max = n_max;
    sp.draft.n_min = 0;
    sp.draft.p_min = 0.0f;
    spec_ = common_speculative_init(sp, n_seq_);
    if (!spec_) throw Error(ErrorKind::ContextError, "llama.cpp could not set up MTP drafting");
    n_max_ = common_speculative_n_max(spec_);
}

void Drafter::set_draft(int n) {
    // The driver drafts its own n_max tokens whatever a call asks for (and cuts
    // the draft after): made for the length asked, it runs no head in vain. Its
    // carried hidden row starts over (as for a new request upstream).
    if (n > 0 && n <= n_heads_ && (n != n_max_ || !spec_)) init_driver(n);
}

Drafter::~Drafter() {
    batch_.reset();
    if (spec_) common_speculative_free(spec_);
    if (ctx_) llama_free(ctx_);
}

bool Drafter::process(const llama_batch & b) {
    if (!spec_) return false;
    batch_->clear();
    for (int32_t i = 0; i < b.n_tokens; ++i) batch_->add(b.token[i], b.pos[i], b.seq_id[i][0], false);
    return common_speculative_process(spec_, *batch_);
}

void Drafter::draft(const std::vector<Want> & wants) {
    if (!spec_) return;
    bool any = false;
    for (const auto & w : wants) {
        w.out->clear();
        if (w.n <= 0) continue;
        auto & dp = common_speculative_get_draft_params(spec_, w.seq);
        dp.drafting = true;
        dp.n_max = std::min(w.n, n_max_);
        dp.pos0 = w.pos0;
        dp.id_last = w.last;
        dp.prompt = w.history;
        dp.result = w.out;
        any = true;
    }
    if (!any) return;
    common_speculative_draft(spec_);
    llama_memory_t mem = llama_get_memory(ctx_);
    for (const auto & w : wants) {
        if (w.n <= 0) continue;
        auto & dp = common_speculative_get_draft_params(spec_, w.seq);
        dp.drafting = false;
        dp.result = nullptr;
        dp.prompt = nullptr;
        // the draft steps wrote the drafted positions into the heads' cache
        llama_memory_seq_rm(mem, w.seq, w.pos0, -1);
        if ((int) w.out->size() > w.n) w.out->resize((size_t) w.n);
    }
}

void Drafter::accept(int n, llama_seq_id seq) {
    if (spec_) common_speculative_accept(spec_, seq, (uint16_t) n);
}

void Drafter::remove_from(llama_pos pos, llama_seq_id seq) {
    llama_memory_t mem = llama_get_memory(ctx_);
    if (pos <= 0 || !llama_memory_seq_rm(mem, seq, pos, -1)) llama_memory_seq_rm(mem, seq, -1, -1);
}

void Drafter::clear() { llama_memory_clear(llama_get_memory(ctx_), true); }

}  // namespace step35
