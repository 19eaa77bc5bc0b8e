// A llama_context over a loaded model: the KV cache and the compute graph.
//
// ContextHandle keeps its own reference to the model, so closing the Model
// never pulls the weights from under a live context. One native call at a
// time may use a context (BusyGuard); a second one gets a clear error rather
// than corrupting the KV cache. It remembers which tokens sit in sequence 0 so
// a new prompt can reuse the common prefix (chat turns, repeated prompts).
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "interrupt.h"
#include "mtp.h"
#include "ggml-cpu.h"
#include "llama.h"

namespace step35 {

// Which rows of a decoded input give logits. Bound as step35._core.Outputs ("none", "last", "all").
enum class Outputs { None, Last, All };

struct ContextOptions {
    uint32_t n_ctx = 4096;
    uint32_t n_batch = 2048;
    uint32_t n_ubatch = 512;
    uint32_t n_seq_max = 1;
    int32_t n_threads = 0;        // 0 = llama.cpp's default
    int32_t n_threads_batch = 0;  // 0 = llama.cpp's default
    llama_flash_attn_type flash_attn = LLAMA_FLASH_ATTN_TYPE_AUTO;
    ggml_type type_k = GGML_TYPE_F16;
    ggml_type type_v = GGML_TYPE_F16;
    bool swa_full = false;
    bool kv_unified = true;
    bool offload_kqv = true;
    bool warmup = true;  // one cheap decode of a single token (no all-experts warm-up)
};

// Append one token of one sequence to `b`: the one batch filler of the single-stream loop, the engine and
// the benchmark (`b` must have room).
inline void batch_add(llama_batch & b, llama_token t, llama_pos pos, llama_seq_id seq, bool logits) {
    const int32_t i = b.n_tokens++;
    b.token[i] = t;
    b.pos[i] = pos;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = seq;
    b.logits[i] = logits;
}

class ContextHandle {
public:
    // `heads`: the model whose MTP heads draft for this context (null: no drafting).
    ContextHandle(std::shared_ptr<llama_model> model, const ContextOptions & opts,
                  std::shared_ptr<llama_model> heads = nullptr);
    ~ContextHandle();
    ContextHandle(const ContextHandle &) = delete;
    ContextHandle & operator=(const ContextHandle &) = delete;

    llama_context * get() const;  // or ClosedError
    const llama_model * model() const { return model_.get(); }
    const llama_vocab * vocab() const { return llama_model_get_vocab(model_.get()); }
    void close();
    bool closed() const { return ctx_ == nullptr; }

    Interrupt & interrupt() { return interrupt_; }
    // The MTP drafter of sequence 0 (null when the context was made without heads).
    Drafter * drafter() { return drafter_.get(); }
    // Tokens known to be in sequence 0, in order from position 0.
    std::vector<llama_token> & history() { return history_; }
    // Forget everything in the KV cache.
    void clear();
    // Keep only the first n tokens of sequence 0; returns false (and clears
    // everything) when the cache cannot drop a partial sequence.
    bool truncate(size_t n);

    // Decode `tokens` into `seq` starting at `pos0`, in chunks of at most
    // `chunk` tokens (0 = n_batch). `outputs`: none, the last token, or
    // every token; the logits of the output rows are written to `out`
    // (rows x n_vocab floats) if it is not null. Call without the GIL.
    // Returns 0 or the failing llama_decode code (with `where` set to the
    // position of the failing chunk); on failure the partial chunk is removed.
    // The MTP heads do not see these tokens: a decode into sequence 0 leaves
    // the drafter out of step with it (Drafter::synced).
    int decode(const llama_token * tokens, size_t n, llama_pos pos0, llama_seq_id seq, Outputs outputs, size_t chunk,
               float * out, llama_pos * where);

    std::atomic<bool> busy{false};
    // Progress of the running call in tokens (for progress lines; any thread may read).
    std::atomic<long long> work_done{0};
    std::atomic<long long> work_total{0};

private:
    void attach_threadpools(int n_threads, int n_threads_batch);
    void free_native();

    std::shared_ptr<llama_model> model_;
    llama_context * ctx_ = nullptr;
    // Persistent CPU worker pools of this context (see CMakeLists: no OpenMP).
    ggml_threadpool_t pool_ = nullptr;
    ggml_threadpool_t pool_batch_ = nullptr;
    void (*pool_free_)(ggml_threadpool_t) = nullptr;
    Interrupt interrupt_;
    std::vector<llama_token> history_;
    std::unique_ptr<Drafter> drafter_;
};

// Marks a context busy for the lifetime of the guard (GIL held when made).
class BusyGuard {
public:
    explicit BusyGuard(ContextHandle & c);
    ~BusyGuard();
    BusyGuard(const BusyGuard &) = delete;
    BusyGuard & operator=(const BusyGuard &) = delete;

private:
    ContextHandle & c_;
};

// Raise the typed error for a failed llama_decode (GIL held).
[[noreturn]] void raise_decode_error(ContextHandle & c, int rc, llama_pos where, size_t n_tokens,
                                     unsigned long long log_mark);

void register_context(pybind11::module_ & m);

}  // namespace step35
