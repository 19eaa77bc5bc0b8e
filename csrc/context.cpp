// Contexts: creation from options, KV-cache bookkeeping, chunked decode and
// the logits API (thin: arguments -> llama.cpp -> result; parameter policy and
// validation live in step35/context.py).
#include "context.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>

#include "errors.h"
#include "log.h"
#include "memory.h"
#include "model.h"
#include "rpc.h"

namespace py = pybind11;

namespace step35 {

ContextHandle::ContextHandle(std::shared_ptr<llama_model> model, const ContextOptions & o,
                             std::shared_ptr<llama_model> heads)
    : model_(std::move(model)) {
    llama_context_params p = llama_context_default_params();
    p.n_ctx = o.n_ctx;
    p.n_batch = o.n_batch;
    p.n_ubatch = o.n_ubatch;
    p.n_seq_max = o.n_seq_max;
    if (o.n_threads > 0) p.n_threads = o.n_threads;
    if (o.n_threads_batch > 0) p.n_threads_batch = o.n_threads_batch;
    p.flash_attn_type = o.flash_attn;
    p.type_k = o.type_k;
    p.type_v = o.type_v;
    p.swa_full = o.swa_full;
    p.kv_unified = o.kv_unified;
    p.offload_kqv = o.offload_kqv;
    p.no_perf = true;
    p.abort_callback = &Interrupt::ggml_abort;
    p.abort_callback_data = &interrupt_;

    auto mark = log_mark();
    {
        py::gil_scoped_release nogil;
        ctx_ = llama_init_from_model(model_.get(), p);
    }
    if (!ctx_) fail(ErrorKind::ContextError, "llama.cpp could not create a context with these settings", mark);
    attach_threadpools((int) llama_n_threads(ctx_), (int) llama_n_threads_batch(ctx_));
    if (heads) {
        try {
            py::gil_scoped_release nogil;
            drafter_ = std::make_unique<Drafter>(std::move(heads), ctx_, o.flash_attn, o.kv_unified, &Interrupt::ggml_abort,
                                                 &interrupt_);
            if (pool_) llama_attach_threadpool(drafter_->context(), pool_, pool_batch_);
        } catch (const Error & e) {
            free_native();
            fail(e.kind, e.what(), mark);
        }
    }

    if (o.warmup) {
        // A cheap warm-up: one token through the graph, so the first real call
        // does not pay for buffer allocation and kernel repacking. Unlike
        // llama.cpp's default warm-up it does not activate every expert, so it
        // cannot run a nearly full machine out of memory.
        const llama_vocab * v = vocab();
        llama_token t = llama_vocab_bos(v);
        if (t == LLAMA_TOKEN_NULL) t = 0;
        interrupt_.begin();
        int rc;
        llama_pos where = 0;
        {
            py::gil_scoped_release nogil;
            rc = decode(&t, 1, 0, 0, Outputs::Last, 0, nullptr, &where);
            llama_memory_clear(llama_get_memory(ctx_), true);
        }
        if (rc != 0) {
            free_native();
            interrupt_.rethrow_if_signalled();
            fail(ErrorKind::ContextError, "the warm-up decode failed (code " + std::to_string(rc) + ")", mark);
        }
    }
}

void ContextHandle::attach_threadpools(int n_threads, int n_threads_batch) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) return;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    auto * new_fn = (decltype(ggml_threadpool_new) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    pool_free_ = (decltype(ggml_threadpool_free) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
    if (!new_fn || !pool_free_) return;  // llama.cpp then makes a pool per graph: slower, still correct
    ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    ggml_threadpool_params tpp_batch = ggml_threadpool_params_default(n_threads_batch);
    if (!ggml_threadpool_params_match(&tpp, &tpp_batch)) {
        pool_batch_ = new_fn(&tpp_batch);
        tpp.paused = true;  // as llama.cpp's tools do: only one pool runs at a time
    }
    pool_ = new_fn(&tpp);
    if (!pool_) {
        if (pool_batch_) pool_free_(pool_batch_);
        pool_batch_ = nullptr;
        return;
    }
    llama_attach_threadpool(ctx_, pool_, pool_batch_);
}

void ContextHandle::free_native() {
    const bool freed = ctx_ != nullptr;
    drafter_.reset();  // before the target it follows
    if (ctx_) llama_free(ctx_);
    ctx_ = nullptr;
    if (pool_free_) {
        if (pool_) pool_free_(pool_);
        if (pool_batch_) pool_free_(pool_batch_);
    }
    pool_ = pool_batch_ = nullptr;
    if (freed) return_free_memory();
}

ContextHandle::~ContextHandle() { free_native(); }

llama_context * ContextHandle::get() const {
    if (!ctx_) throw Error(ErrorKind::ClosedError, "this Context has been closed");
    return ctx_;
}

void ContextHandle::close() {
    if (busy.load()) throw Error(ErrorKind::ContextBusyError, "cannot close a Context while a call is using it");
    if (!ctx_) return;
    history_.clear();
    py::gil_scoped_release nogil;
    free_native();
}

void ContextHandle::clear() {
    llama_memory_clear(llama_get_memory(get()), true);
    history_.clear();
    if (drafter_) drafter_->clear();
}

bool ContextHandle::truncate(size_t n) {
    if (n >= history_.size()) return true;
    if (n == 0) {
        clear();
        return true;
    }
    llama_memory_t mem = llama_get_memory(get());
    llama_memory_seq_rm(mem, 0, (llama_pos) n, -1);
    if (drafter_) drafter_->remove_from((llama_pos) n);
    history_.resize(n);
    // A sliding-window cache drops cells older than the window as it goes: when
    // the ones the next token at position n needs are gone, the kept prefix is
    // useless (llama-server applies the same test).
    const llama_pos n_swa = std::max<llama_pos>(0, llama_model_n_swa(model_.get()));
    // (-1: the sliding-window cache holds nothing of the kept prefix at all.)
    const llama_pos pos_min = llama_memory_seq_pos_min(mem, 0);
    if (pos_min < 0 || pos_min > std::max<llama_pos>(0, (llama_pos) n - n_swa)) {
        clear();
        return false;
    }
    return true;
}

int ContextHandle::decode(const llama_token * tokens, size_t n, llama_pos pos0, llama_seq_id seq, Outputs outputs,
                          size_t chunk, float * out, llama_pos * where) {
    llama_context * ctx = ctx_;
    const size_t n_batch = llama_n_batch(ctx);
    if (chunk == 0 || chunk > n_batch) chunk = n_batch;
    const int32_t n_vocab = llama_vocab_n_tokens(vocab());
    llama_batch batch = llama_batch_init((int32_t) std::min(chunk, n), 0, 1);
    size_t row = 0;
    int rc = 0;
    for (size_t start = 0; start < n; start += chunk) {
        const size_t len = std::min(chunk, n - start);
        batch.n_tokens = 0;
        for (size_t k = start; k < start + len; ++k)
            batch_add(batch, tokens[k], pos0 + (llama_pos) k, seq,
                      outputs == Outputs::All || (outputs == Outputs::Last && k == n - 1));
        rc = llama_decode(ctx, batch);
        if (rc == 0 && drafter_ && seq == 0) drafter_->synced = false;  // the heads did not see this
        if (rc != 0) {
            *where = pos0 + (llama_pos) start;
            // Processed ubatches of an aborted/failed chunk stay in the cache: drop them.
            llama_memory_seq_rm(llama_get_memory(ctx), seq, *where, -1);
            if (drafter_ && seq == 0) drafter_->remove_from(*where);
            break;
        }
        if (out) {
            for (size_t i = 0; i < len; ++i) {
                if (!batch.logits[i]) continue;
                const float * l = llama_get_logits_ith(ctx, (int32_t) i);
                std::memcpy(out + row * (size_t) n_vocab, l, sizeof(float) * (size_t) n_vocab);
                ++row;
            }
        }
    }
    llama_batch_free(batch);
    rpc_check(ctx, model());  // a model on RPC workers: RPCError if one went away (before anyone reads the logits)
    return rc;
}

BusyGuard::BusyGuard(ContextHandle & c) : c_(c) {
    c.get();
    bool expected = false;
    if (!c.busy.compare_exchange_strong(expected, true))
        throw Error(ErrorKind::ContextBusyError,
                    "this Context is in use by another call (an unfinished stream, or another thread); "
                    "finish or close that first, or use a separate Context");
}

BusyGuard::~BusyGuard() { c_.busy.store(false); }

void raise_decode_error(ContextHandle & c, int rc, llama_pos where, size_t n_tokens, unsigned long long mark) {
    c.interrupt().rethrow_if_signalled();
    const std::string n_ctx = std::to_string(llama_n_ctx(c.get()));
    switch (rc) {
        case 1:
            fail(ErrorKind::ContextOverflowError,
                 "no room in the KV cache for the tokens at position " + std::to_string(where) + " (n_ctx=" + n_ctx +
                     "); use a larger n_ctx or a shorter input",
                 mark);
        case 2: throw Error(ErrorKind::Cancelled, "decoding was stopped");
        case -1: fail(ErrorKind::DecodeError, "llama.cpp rejected the batch as invalid", mark);
        case 3:
            fail(ErrorKind::DecodeError,
                 "the MTP heads failed on the tokens at position " + std::to_string(where) + " (n_ctx=" + n_ctx + ")",
                 mark);
        default:
            fail(ErrorKind::DecodeError,
                 "llama_decode failed with code " + std::to_string(rc) + " at position " + std::to_string(where) +
                     " of a " + std::to_string(n_tokens) + "-token input",
                 mark);
    }
}

namespace {

std::shared_ptr<ContextHandle> new_context(const ModelHandle & m, const ContextOptions & o, bool mtp) {
    std::shared_ptr<llama_model> heads;
    if (mtp) {
        heads = m.heads();
        if (!heads) throw py::value_error("this model has no MTP heads loaded; load it with mtp=True");
    }
    return std::make_shared<ContextHandle>(m.get(), o, std::move(heads));
}

// Decode tokens at positions [pos0, pos0+n) of `seq` and return the logits of
// the requested rows as a float32 array (rows x n_vocab).
py::array_t<float> eval(ContextHandle & c, const std::vector<llama_token> & tokens, llama_pos pos0, llama_seq_id seq,
                        Outputs outputs, size_t chunk) {
    BusyGuard busy(c);
    llama_context * ctx = c.get();
    check_tokens(c.vocab(), tokens.data(), tokens.size());
    if (seq < 0 || (uint32_t) seq >= llama_n_seq_max(ctx))
        throw py::value_error("seq_id " + std::to_string(seq) + " is outside [0, n_seq_max=" +
                              std::to_string(llama_n_seq_max(ctx)) + ")");
    if (pos0 < 0) throw py::value_error("pos0 must be >= 0");
    const size_t n_ctx = llama_n_ctx(ctx);
    if ((size_t) pos0 + tokens.size() > n_ctx)
        throw Error(ErrorKind::ContextOverflowError,
                    std::to_string(pos0) + " + " + std::to_string(tokens.size()) + " tokens do not fit in n_ctx=" +
                        std::to_string(n_ctx) + "; use a larger n_ctx or a shorter input");
    const size_t n_vocab = (size_t) llama_vocab_n_tokens(c.vocab());
    const size_t rows =
        outputs == Outputs::All ? tokens.size() : (outputs == Outputs::Last && !tokens.empty() ? 1 : 0);
    py::array_t<float> out({rows, n_vocab});
    float * data = out.mutable_data();
    if (tokens.empty()) return out;

    // Writing into seq 0 continues its history or rewinds it to pos0.
    if (seq == 0) {
        auto & h = c.history();
        if ((size_t) pos0 > h.size())
            throw py::value_error("pos " + std::to_string(pos0) + " leaves a gap: sequence 0 holds " +
                                  std::to_string(h.size()) + " tokens");
        if (!c.truncate((size_t) pos0))
            throw Error(ErrorKind::Step35Error,
                        "cannot rewind to position " + std::to_string(pos0) +
                            ": the sliding-window cache no longer holds the tokens before it; create the context "
                            "with swa_full=True, or evaluate again from position 0");
    }

    auto mark = log_mark();
    c.interrupt().begin();
    int rc;
    llama_pos where = 0;
    {
        py::gil_scoped_release nogil;
        rc = c.decode(tokens.data(), tokens.size(), pos0, seq, outputs, chunk, data, &where);
    }
    if (rc != 0) {
        if (seq == 0) c.history().resize(std::min(c.history().size(), (size_t) std::max(where, 0)));
        raise_decode_error(c, rc, where, tokens.size(), mark);
    }
    if (seq == 0 && (size_t) pos0 == c.history().size())
        c.history().insert(c.history().end(), tokens.begin(), tokens.end());
    return out;
}

}  // namespace

void register_context(py::module_ & m) {
    // The enums step35.ContextParams' settings map to, by name: one home for their values.
    py::enum_<Outputs>(m, "Outputs", "Which rows of a decoded input give logits.")
        .value("none", Outputs::None)
        .value("last", Outputs::Last)
        .value("all", Outputs::All);
    py::enum_<llama_flash_attn_type>(m, "FlashAttn", "llama.cpp's flash attention setting (ContextParams.flash_attn).")
        .value("auto", LLAMA_FLASH_ATTN_TYPE_AUTO)
        .value("off", LLAMA_FLASH_ATTN_TYPE_DISABLED)
        .value("on", LLAMA_FLASH_ATTN_TYPE_ENABLED);
    py::enum_<ggml_type>(m, "KVType", "The KV-cache element types a context takes (ContextParams.type_k / type_v).")
        .value("f32", GGML_TYPE_F32)
        .value("f16", GGML_TYPE_F16)
        .value("bf16", GGML_TYPE_BF16)
        .value("q8_0", GGML_TYPE_Q8_0)
        .value("q4_0", GGML_TYPE_Q4_0)
        .value("q4_1", GGML_TYPE_Q4_1)
        .value("q5_0", GGML_TYPE_Q5_0)
        .value("q5_1", GGML_TYPE_Q5_1)
        .value("iq4_nl", GGML_TYPE_IQ4_NL);

    py::class_<ContextOptions>(m, "ContextOptions", "Options of a llama.cpp context (see step35.ContextParams).")
        .def(py::init<>())
        .def_readwrite("n_ctx", &ContextOptions::n_ctx)
        .def_readwrite("n_batch", &ContextOptions::n_batch)
        .def_readwrite("n_ubatch", &ContextOptions::n_ubatch)
        .def_readwrite("n_seq_max", &ContextOptions::n_seq_max)
        .def_readwrite("n_threads", &ContextOptions::n_threads)
        .def_readwrite("n_threads_batch", &ContextOptions::n_threads_batch)
        .def_readwrite("flash_attn", &ContextOptions::flash_attn)
        .def_readwrite("type_k", &ContextOptions::type_k)
        .def_readwrite("type_v", &ContextOptions::type_v)
        .def_readwrite("swa_full", &ContextOptions::swa_full)
        .def_readwrite("kv_unified", &ContextOptions::kv_unified)
        .def_readwrite("offload_kqv", &ContextOptions::offload_kqv)
        .def_readwrite("warmup", &ContextOptions::warmup);

    py::class_<ContextHandle, std::shared_ptr<ContextHandle>>(m, "ContextHandle", "A llama.cpp context (use step35.Context).")
        .def("close", &ContextHandle::close)
        .def_property_readonly("closed", &ContextHandle::closed)
        .def_property_readonly("progress",
                               [](const ContextHandle & c) {
                                   return py::make_tuple(c.work_done.load(), c.work_total.load());
                               },
                               "(tokens done, tokens in total) of the running call: a bench's tokens, or a "
                               "generation's tokens generated of the most it may generate; (0, 0) when none runs.")
        .def_property_readonly("n_ctx", [](const ContextHandle & c) { return llama_n_ctx(c.get()); })
        .def_property_readonly("n_batch", [](const ContextHandle & c) { return llama_n_batch(c.get()); })
        .def_property_readonly("n_ubatch", [](const ContextHandle & c) { return llama_n_ubatch(c.get()); })
        .def_property_readonly("n_seq_max", [](const ContextHandle & c) { return llama_n_seq_max(c.get()); })
        .def_property_readonly("n_threads", [](const ContextHandle & c) { return llama_n_threads(c.get()); })
        .def_property_readonly("n_threads_batch",
                               [](const ContextHandle & c) { return llama_n_threads_batch(c.get()); })
        .def_property_readonly("history", [](ContextHandle & c) { return c.history(); },
                               "Tokens held in sequence 0, from position 0.")
        .def("clear", [](ContextHandle & c) {
            BusyGuard busy(c);
            c.clear();
        }, "Empty the KV cache.")
        .def("seq_pos_max", [](ContextHandle & c, llama_seq_id s) {
            return llama_memory_seq_pos_max(llama_get_memory(c.get()), s);
        })
        .def_property_readonly("has_drafter", [](ContextHandle & c) { return c.drafter() != nullptr; },
                               "Whether the context drafts with MTP heads.")
        .def_property_readonly("draft_max", [](ContextHandle & c) { return c.drafter() ? c.drafter()->n_max() : 0; },
                               "Most tokens one MTP draft can hold (0: no drafter).")
        .def("cancel", [](ContextHandle & c) { c.interrupt().request(); },
             "Ask the running call to stop (from any thread).")
        .def("eval", &eval, py::arg("tokens"), py::arg("pos0") = 0, py::arg("seq_id") = 0,
             py::arg("outputs") = Outputs::All,
             py::arg("chunk") = 0,
             "Decode tokens at pos0.. and return the logits of the output rows (float32, rows x n_vocab).");

    m.def("new_context", &new_context, py::arg("model"), py::arg("options"), py::arg("mtp") = false,
          "Create a context (GIL released while llama.cpp allocates it); mtp=True adds the MTP draft context.");
}

}  // namespace step35
