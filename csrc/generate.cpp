// The token loop: decode -> sample -> detokenize -> stop check, in C++ with
// the GIL released. A Generation owns its context for its lifetime (BusyGuard)
// and hands text back in pieces that never split a UTF-8 character and never
// contain (a prefix of) a stop string (TextOutput, sequence.h). Streaming
// calls step(false) once per piece; a non-streaming call runs the whole loop
// in one step(true).
//
// With a draft length (MTP), each step drafts up to that many tokens with the
// context's MTP heads, decodes the last token and the drafts in one batch, and
// samples the target at every row in turn: a drafted token is kept while it
// equals the target's own sample, and the first sample that differs (or the
// one after the last draft) is the next token. Each emitted token is a sample
// of the target's distribution drawn exactly as without drafting, so greedy
// output is the same, and so is a seeded sample.
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "context.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "sequence.h"

namespace py = pybind11;

namespace step35 {

namespace {

class Generation {
public:
    Generation(std::shared_ptr<ContextHandle> ctx, std::vector<llama_token> prompt, int64_t max_tokens,
               const SamplingOptions & sampling, std::vector<std::string> stop, bool render_special, int draft)
        : ctx_(std::move(ctx)), prompt_(std::move(prompt)), max_tokens_(max_tokens),
          out_(std::move(stop), render_special), draft_(draft) {
        llama_context * c = ctx_->get();
        const llama_vocab * vocab = ctx_->vocab();
        if (prompt_.empty()) throw py::value_error("the prompt has no tokens");
        check_tokens(vocab, prompt_.data(), prompt_.size());
        const size_t n_ctx = llama_n_ctx(c);
        if (prompt_.size() >= n_ctx)
            throw Error(ErrorKind::ContextOverflowError,
                        "the prompt has " + std::to_string(prompt_.size()) + " tokens but the context holds " +
                            std::to_string(n_ctx) + " (and at least one more is needed to generate); "
                            "use a larger n_ctx or a shorter prompt");
        if (draft_ < 0) throw py::value_error("draft must be >= 0");
        Drafter * d = ctx_->drafter();
        if (draft_ > 0 && !d)
            throw py::value_error("this context has no MTP heads to draft with; load the model with mtp=True "
                                  "(or draft=0)");
        if (d && draft_ > d->n_max())
            throw py::value_error("draft=" + std::to_string(draft_) + " but the model has " +
                                  std::to_string(d->n_max()) + " MTP head(s): one token per head at most");
        guard_ = std::make_unique<BusyGuard>(*ctx_);
        sampler_ = std::make_unique<Sampler>(sampling, vocab, prompt_);
        if (d) d->tracking = draft_ > 0;
        if (d && draft_ > 0) d->set_draft(draft_);
        drafts_count_.reset(draft_);
        // progress of this call (Context progress): tokens generated of the most it may generate
        ctx_->work_done.store(0);
        ctx_->work_total.store(max_tokens_ >= 0 ? max_tokens_ : (long long) (n_ctx - prompt_.size()));
        ctx_->interrupt().begin();
    }

    ~Generation() { release(); }

    // Run until there is text to hand out (or to the end when `all`); returns it.
    py::str step(bool all) {
        if (finished_) return py::str("");
        ctx_->interrupt().arm();
        auto mark = log_mark();
        Status st;
        try {
            py::gil_scoped_release nogil;
            st = run(all);
        } catch (const Error &) {  // e.g. a grammar that allows no token: end, free the context, raise
            finish(FinishReason::Error);
            release();
            throw;
        }
        if (ctx_->interrupt().signalled()) {  // Ctrl-C: stop, free the context, re-raise
            finish(FinishReason::Cancelled);
            release();
            ctx_->interrupt().rethrow_if_signalled();
        }
        if (st.rc == 2) {  // stopped from another thread while decoding
            finish(FinishReason::Cancelled);
        } else if (st.rc != 0) {
            finish(FinishReason::Error);
            release();
            raise_decode_error(*ctx_, st.rc, st.where, st.n, mark);
        }
        std::string text = finished_ ? out_.take_all() : out_.take_ready();
        if (finished_) release();
        return decode_utf8(text);
    }

    void close() {
        if (!finished_) finish(FinishReason::Cancelled);
        release();
    }

    bool finished() const { return finished_; }
    FinishReason finish_reason() const { return finish_reason_; }
    // The stop string that ended the generation, or None.
    py::object stop_sequence() const {
        if (!finished_ || out_.matched().empty()) return py::none();
        return py::str(out_.matched());
    }

    Stats stats() const {
        Stats st;
        st.prompt_tokens = prompt_.size();
        st.prompt_tokens_evaluated = n_prompt_eval_;
        st.prompt_tokens_cached = prompt_done_ ? prompt_.size() - n_prompt_eval_ : 0;
        st.prompt_ms = t_prompt_ms_;
        st.generated_tokens = n_gen_;
        st.generation_ms = t_gen_ms_;
        st.ttft_ms = ttft_ms_;
        if (draft_ > 0) drafts_count_.fill(st, draft_);
        return st;
    }

    const std::vector<llama_token> & tokens() const { return generated_; }

private:
    struct Status {
        int rc = 0;
        llama_pos where = 0;
        size_t n = 0;
    };

    Status run(bool all) {
        Status st;
        llama_context * c = ctx_->get();
        const size_t n_ctx = llama_n_ctx(c);
        const auto t_start = Clock::now();
        if (!prompt_done_) {
            auto & hist = ctx_->history();
            size_t keep = 0;
            Drafter * d = ctx_->drafter();
            // the heads' cache must follow the target's from the start: a prefix
            // decoded without them is decoded again
            const bool reuse = !(d && d->tracking && !d->synced);
            while (reuse && keep < hist.size() && keep < prompt_.size() && hist[keep] == prompt_[keep]) ++keep;
            if (keep == prompt_.size()) --keep;  // the last prompt token must be decoded for its logits
            if (!ctx_->truncate(keep)) keep = 0;
            if (keep == 0) ctx_->clear();
            const size_t n = prompt_.size() - keep;
            st.rc = ctx_->decode(prompt_.data() + keep, n, (llama_pos) keep, 0, Outputs::Last, 0, nullptr, &st.where);
            if (st.rc != 0) {
                st.n = n;
                hist.resize(std::min(hist.size(), (size_t) std::max<llama_pos>(st.where, 0)));
                return st;
            }
            hist.assign(prompt_.begin(), prompt_.end());
            if (d && d->tracking) d->synced = true;
            n_prompt_eval_ = n;
            prompt_done_ = true;
            t_gen_start_ = Clock::now();
            t_prompt_ms_ = ms_between(t_start, t_gen_start_);
        }
        while (!finished_) {
            if (max_tokens_ >= 0 && (int64_t) n_gen_ >= max_tokens_) {
                finish(FinishReason::Length);
                break;
            }
            if (ctx_->interrupt().should_stop()) {
                finish(FinishReason::Cancelled);
                break;
            }
            if (undecoded_ != LLAMA_TOKEN_NULL && draft_ > 0) {
                st = speculate();
                if (st.rc != 0) return st;
                if (!all && out_.ready() > 0) break;
                continue;
            }
            if (undecoded_ != LLAMA_TOKEN_NULL) {
                auto & hist = ctx_->history();
                st.rc = ctx_->decode(&undecoded_, 1, (llama_pos) hist.size(), 0, Outputs::Last, 0, nullptr, &st.where);
                if (st.rc != 0) {
                    st.n = 1;
                    return st;
                }
                hist.push_back(undecoded_);
                undecoded_ = LLAMA_TOKEN_NULL;
            }
            const llama_token tok = sampler_->sample(c, -1);
            if (emit(tok, ctx_->history().size(), n_ctx)) break;
            undecoded_ = tok;
            if (!all && out_.ready() > 0) break;
        }
        return st;
    }

    // Hand out sampled token `tok`, with `n_before` tokens in the cache before
    // its position; true when generation ends with it.
    bool emit(llama_token tok, size_t n_before, size_t n_ctx) {
        if (n_gen_ == 0) ttft_ms_ = t_prompt_ms_ + ms_between(t_gen_start_, Clock::now());
        if (llama_vocab_is_eog(ctx_->vocab(), tok)) {
            finish(FinishReason::Stop);
            return true;
        }
        ++n_gen_;
        ctx_->work_done.store((long long) n_gen_, std::memory_order_relaxed);
        generated_.push_back(tok);
        if (out_.append(ctx_->vocab(), tok)) {
            finish(FinishReason::Stop);
            return true;
        }
        if (max_tokens_ >= 0 && (int64_t) n_gen_ >= max_tokens_) {
            finish(FinishReason::Length);
            return true;
        }
        if (n_before + 1 >= n_ctx) {
            finish(FinishReason::Length);
            return true;
        }
        return false;
    }

    // One MTP step: draft after the undecoded token, decode it with the drafts,
    // then sample and emit row by row while the drafts hold.
    Status speculate() {
        Status st;
        llama_context * c = ctx_->get();
        Drafter & d = *ctx_->drafter();
        auto & hist = ctx_->history();
        const size_t n_ctx = llama_n_ctx(c);
        const llama_pos pos0 = (llama_pos) hist.size();
        int64_t n = draft_;
        if (max_tokens_ >= 0) n = std::min<int64_t>(n, max_tokens_ - (int64_t) n_gen_ - 1);
        n = std::min<int64_t>(n, (int64_t) n_ctx - (int64_t) pos0 - 2);
        d.draft(undecoded_, pos0, (int) std::max<int64_t>(n, 0), hist, drafts_);
        batch_.assign(1, undecoded_);
        batch_.insert(batch_.end(), drafts_.begin(), drafts_.end());
        st.rc = ctx_->decode(batch_.data(), batch_.size(), pos0, 0, Outputs::All, 0, nullptr, &st.where);
        if (st.rc != 0) {
            st.n = batch_.size();
            return st;
        }
        hist.push_back(undecoded_);
        undecoded_ = LLAMA_TOKEN_NULL;
        size_t accepted = 0;
        // rejected drafts leave both caches (also when sampling throws)
        auto trim = [&] {
            const llama_pos keep = pos0 + 1 + (llama_pos) accepted;
            llama_memory_seq_rm(llama_get_memory(c), 0, keep, -1);
            d.remove_from(keep);
        };
        try {
            for (size_t i = 0; i <= drafts_.size(); ++i) {
                const llama_token tok = sampler_->sample(c, (int32_t) i);
                const bool kept = i < drafts_.size() && tok == drafts_[i];
                if (kept) {
                    ++accepted;
                    hist.push_back(tok);
                }
                if (emit(tok, hist.size() - (kept ? 1 : 0), n_ctx)) break;
                if (!kept) {
                    undecoded_ = tok;
                    break;
                }
            }
        } catch (...) {
            trim();
            throw;
        }
        drafts_count_.step(drafts_.size(), accepted);
        if (!drafts_.empty()) d.accept((int) accepted);
        trim();
        return st;
    }

    void finish(FinishReason reason) {
        if (finished_) return;
        finished_ = true;
        finish_reason_ = reason;
        if (prompt_done_ && t_gen_ms_ == 0.0) t_gen_ms_ = ms_between(t_gen_start_, Clock::now());
    }

    void release() {
        if (guard_) {  // the context is free again: no call runs on it
            ctx_->work_done.store(0);
            ctx_->work_total.store(0);
        }
        if (guard_ && ctx_->drafter()) ctx_->drafter()->tracking = false;
        sampler_.reset();
        guard_.reset();
    }

    std::shared_ptr<ContextHandle> ctx_;
    std::vector<llama_token> prompt_;
    int64_t max_tokens_;
    TextOutput out_;
    std::unique_ptr<BusyGuard> guard_;
    std::unique_ptr<Sampler> sampler_;

    bool prompt_done_ = false;
    bool finished_ = false;
    FinishReason finish_reason_ = FinishReason::Running;
    llama_token undecoded_ = LLAMA_TOKEN_NULL;
    std::vector<llama_token> generated_;
    size_t n_gen_ = 0;
    size_t n_prompt_eval_ = 0;
    Clock::time_point t_gen_start_;
    double t_prompt_ms_ = 0.0, t_gen_ms_ = 0.0, ttft_ms_ = 0.0;

    int draft_ = 0;  // MTP draft length (0: off)
    std::vector<llama_token> drafts_, batch_;
    DraftCounts drafts_count_;
};

}  // namespace

void register_generate(py::module_ & m) {
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

    py::class_<Generation>(m, "Generation", "A running token loop (use step35.Model.generate).")
        .def(py::init<std::shared_ptr<ContextHandle>, std::vector<llama_token>, int64_t, const SamplingOptions &,
                      std::vector<std::string>, bool, int>(),
             py::arg("context"), py::arg("prompt"), py::arg("max_tokens"), py::arg("sampling"), py::arg("stop"),
             py::arg("render_special") = true, py::arg("draft") = 0)
        .def("step", &Generation::step, py::arg("all") = false,
             "Run the loop (GIL released) until text is ready, or to the end with all=True.")
        .def("close", &Generation::close, "Stop and free the context for the next call.")
        .def_property_readonly("finished", &Generation::finished)
        .def_property_readonly("finish_reason", &Generation::finish_reason)
        .def_property_readonly("stop_sequence", &Generation::stop_sequence,
                               "The stop string that ended the generation (None: another reason, or running).")
        .def_property_readonly("tokens", &Generation::tokens)
        .def("stats", &Generation::stats);
}

}  // namespace step35
