// The token loop: decode -> sample -> detokenize -> stop check, in C++ with
// the GIL released. A Generation owns its context for its lifetime (BusyGuard)
// and hands text back in pieces that never split a UTF-8 character and never
// contain (a prefix of) a stop string (TextOutput, sequence.h). Streaming
// calls step(false) once per piece; a non-streaming call runs the whole loop
// in one step(true).
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
               const SamplingOptions & sampling, std::vector<std::string> stop, bool render_special)
        : ctx_(std::move(ctx)), prompt_(std::move(prompt)), max_tokens_(max_tokens),
          out_(std::move(stop), render_special) {
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
        guard_ = std::make_unique<BusyGuard>(*ctx_);
        sampler_ = std::make_unique<Sampler>(sampling, vocab, prompt_);
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
            finish("error");
            release();
            throw;
        }
        if (ctx_->interrupt().signalled()) {  // Ctrl-C: stop, free the context, re-raise
            finish("cancelled");
            release();
            ctx_->interrupt().rethrow_if_signalled();
        }
        if (st.rc == 2) {  // stopped from another thread while decoding
            finish("cancelled");
        } else if (st.rc != 0) {
            finish("error");
            release();
            raise_decode_error(*ctx_, st.rc, st.where, st.n, mark);
        }
        std::string text = finished_ ? out_.take_all() : out_.take_ready();
        if (finished_) release();
        return decode_utf8(text);
    }

    void close() {
        if (!finished_) finish("cancelled");
        release();
    }

    bool finished() const { return finished_; }
    const std::string & finish_reason() const { return finish_reason_; }

    py::dict stats() const {
        py::dict d;
        d["prompt_tokens"] = prompt_.size();
        d["prompt_tokens_evaluated"] = n_prompt_eval_;
        d["prompt_ms"] = t_prompt_ms_;
        d["generated_tokens"] = n_gen_;
        d["generation_ms"] = t_gen_ms_;
        d["ttft_ms"] = ttft_ms_;
        return d;
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
        const llama_vocab * vocab = ctx_->vocab();
        const size_t n_ctx = llama_n_ctx(c);
        const auto t_start = Clock::now();
        if (!prompt_done_) {
            auto & hist = ctx_->history();
            size_t keep = 0;
            while (keep < hist.size() && keep < prompt_.size() && hist[keep] == prompt_[keep]) ++keep;
            if (keep == prompt_.size()) --keep;  // the last prompt token must be decoded for its logits
            if (!ctx_->truncate(keep)) keep = 0;
            if (keep == 0) ctx_->clear();
            const size_t n = prompt_.size() - keep;
            st.rc = ctx_->decode(prompt_.data() + keep, n, (llama_pos) keep, 0, 1, 0, nullptr, &st.where);
            if (st.rc != 0) {
                st.n = n;
                hist.resize(std::min(hist.size(), (size_t) std::max<llama_pos>(st.where, 0)));
                return st;
            }
            hist.assign(prompt_.begin(), prompt_.end());
            n_prompt_eval_ = n;
            prompt_done_ = true;
            t_gen_start_ = Clock::now();
            t_prompt_ms_ = ms_between(t_start, t_gen_start_);
        }
        while (!finished_) {
            if (max_tokens_ >= 0 && (int64_t) n_gen_ >= max_tokens_) {
                finish("length");
                break;
            }
            if (ctx_->interrupt().should_stop()) {
                finish("cancelled");
                break;
            }
            if (undecoded_ != LLAMA_TOKEN_NULL) {
                auto & hist = ctx_->history();
                st.rc = ctx_->decode(&undecoded_, 1, (llama_pos) hist.size(), 0, 1, 0, nullptr, &st.where);
                if (st.rc != 0) {
                    st.n = 1;
                    return st;
                }
                hist.push_back(undecoded_);
                undecoded_ = LLAMA_TOKEN_NULL;
            }
            const llama_token tok = sampler_->sample(c, -1);
            if (n_gen_ == 0) ttft_ms_ = t_prompt_ms_ + ms_between(t_gen_start_, Clock::now());
            if (llama_vocab_is_eog(vocab, tok)) {
                finish("stop");
                break;
            }
            ++n_gen_;
            generated_.push_back(tok);
            if (out_.append(vocab, tok)) {
                finish("stop");
                break;
            }
            if (max_tokens_ >= 0 && (int64_t) n_gen_ >= max_tokens_) {
                finish("length");
                break;
            }
            if (ctx_->history().size() + 1 >= n_ctx) {
                finish("length");
                break;
            }
            undecoded_ = tok;
            if (!all && out_.ready() > 0) break;
        }
        return st;
    }

    void finish(const char * reason) {
        if (finished_) return;
        finished_ = true;
        finish_reason_ = reason;
        if (prompt_done_ && t_gen_ms_ == 0.0) t_gen_ms_ = ms_between(t_gen_start_, Clock::now());
    }

    void release() {
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
    std::string finish_reason_;
    llama_token undecoded_ = LLAMA_TOKEN_NULL;
    std::vector<llama_token> generated_;
    size_t n_gen_ = 0;
    size_t n_prompt_eval_ = 0;
    Clock::time_point t_gen_start_;
    double t_prompt_ms_ = 0.0, t_gen_ms_ = 0.0, ttft_ms_ = 0.0;

};

}  // namespace

void register_generate(py::module_ & m) {
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
                      std::vector<std::string>, bool>(),
             py::arg("context"), py::arg("prompt"), py::arg("max_tokens"), py::arg("sampling"), py::arg("stop"),
             py::arg("render_special") = true)
        .def("step", &Generation::step, py::arg("all") = false,
             "Run the loop (GIL released) until text is ready, or to the end with all=True.")
        .def("close", &Generation::close, "Stop and free the context for the next call.")
        .def_property_readonly("finished", &Generation::finished)
        .def_property_readonly("finish_reason", &Generation::finish_reason)
        .def_property_readonly("tokens", &Generation::tokens)
        .def("stats", &Generation::stats);
}

}  // namespace step35
