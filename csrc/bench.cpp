// One row of a batched benchmark, with the semantics of llama.cpp's
// llama-batched-bench (tools/batched-bench): `pl` sequences each process a
// `pp`-token prompt (or one shared prompt copied to all of them), then generate
// `tg` tokens each, all sequences advancing together in one batch per step
// (or one sequence after the other with tg_separate). Tokens are random ids.
// The loops and timers run in C++ with the GIL released; step35/tools/bench.py
// iterates over rows, prints the table and the progress line.
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "context.h"
#include "errors.h"
#include "log.h"
#include "rpc.h"

namespace py = pybind11;

namespace step35 {

namespace {

using clock_type = std::chrono::steady_clock;

struct Tokens {
    std::vector<llama_token> tok;
    std::vector<llama_pos> pos;
    std::vector<llama_seq_id> seq;
    std::vector<int8_t> out;
    void clear() { tok.clear(), pos.clear(), seq.clear(), out.clear(); }
    void add(llama_token t, llama_pos p, llama_seq_id s, bool o) {
        tok.push_back(t), pos.push_back(p), seq.push_back(s), out.push_back(o);
    }
};

class Bench {
public:
    Bench(ContextHandle & c, uint32_t seed) : c_(c), rng_(seed) {
        n_vocab_ = llama_vocab_n_tokens(c.vocab());
        const int32_t n_batch = (int32_t) llama_n_batch(c.get());
        batch_ = llama_batch_init(n_batch, 0, 1);
        n_batch_ = n_batch;
    }
    ~Bench() { llama_batch_free(batch_); }

    llama_token rand_token() { return (llama_token) (rng_() % (uint32_t) n_vocab_); }

    // Decode `t` in chunks of n_batch; returns the llama_decode code.
    int decode(const Tokens & t, bool synchronize) {
        llama_context * ctx = c_.get();
        for (size_t i = 0; i < t.tok.size(); i += (size_t) n_batch_) {
            const size_t n = std::min((size_t) n_batch_, t.tok.size() - i);
            batch_.n_tokens = 0;
            for (size_t k = 0; k < n; ++k) batch_add(batch_, t.tok[i + k], t.pos[i + k], t.seq[i + k], t.out[i + k]);
            const int rc = llama_decode(ctx, batch_);
            rpc_check(ctx, c_.model());  // on RPC workers: RPCError if one went away
            if (rc != 0) return rc;
            if (synchronize) llama_synchronize(ctx);
            c_.work_done.fetch_add((long long) n, std::memory_order_relaxed);
        }
        return 0;
    }

private:
    ContextHandle & c_;
    std::mt19937 rng_;
    int32_t n_vocab_ = 0;
    int32_t n_batch_ = 0;
    llama_batch batch_{};
};

int64_t required_kv(int pp, int tg, int pl, bool shared, bool kv_unified) {
    return shared ? (int64_t) (kv_unified ? pp : pl * pp) + (int64_t) pl * tg : (int64_t) pl * (pp + tg);
}

// Warm-up as llama-batched-bench does: 16 random tokens through sequence 0.
void warmup(ContextHandle & c, uint32_t seed) {
    BusyGuard busy(c);
    c.interrupt().begin();
    auto mark = log_mark();
    int rc;
    {
        py::gil_scoped_release nogil;
        Bench b(c, seed);
        Tokens t;
        for (int i = 0; i < 16; ++i) t.add(b.rand_token(), i, 0, false);
        rc = b.decode(t, true);
        llama_memory_clear(llama_get_memory(c.get()), true);
    }
    c.history().clear();
    if (rc != 0) raise_decode_error(c, rc, 0, 16, mark);
}

py::dict row(ContextHandle & c, int pp, int tg, int pl, bool shared, bool tg_separate, bool kv_unified,
             uint32_t seed) {
    if (pp < 0 || tg < 0 || pl < 1) throw py::value_error("need pp >= 0, tg >= 0 and pl >= 1");
    BusyGuard busy(c);
    llama_context * ctx = c.get();
    if ((uint32_t) pl > llama_n_seq_max(ctx))
        throw py::value_error("pl=" + std::to_string(pl) + " exceeds the context's n_seq_max=" +
                              std::to_string(llama_n_seq_max(ctx)));
    const int64_t n_kv = required_kv(pp, tg, pl, shared, kv_unified);
    if (n_kv > (int64_t) llama_n_ctx(ctx))
        throw Error(ErrorKind::ContextOverflowError, "this row needs " + std::to_string(n_kv) +
                                                         " KV cells but the context has n_ctx=" +
                                                         std::to_string(llama_n_ctx(ctx)));
    c.interrupt().begin();
    auto mark = log_mark();
    int rc = 0;
    double t_pp = 0, t_tg = 0;
    {
        py::gil_scoped_release nogil;
        Bench b(c, seed);
        llama_memory_t mem = llama_get_memory(ctx);
        Tokens t;
        for (int j = 0; j < (shared ? 1 : pl); ++j)
            for (int i = 0; i < pp; ++i) t.add(b.rand_token(), i, j, i == pp - 1);
        llama_memory_clear(mem, false);
        c.work_done.store(0);
        c.work_total.store((long long) t.tok.size() + (long long) pl * tg);
        const auto t0 = clock_type::now();
        rc = b.decode(t, false);
        llama_synchronize(ctx);
        const auto t1 = clock_type::now();
        t_pp = std::chrono::duration<double>(t1 - t0).count();
        if (rc == 0 && shared) {
            for (int i = 1; i < pl; ++i) llama_memory_seq_cp(mem, 0, i, -1, -1);
            if (!kv_unified) {  // one dummy token applies the copy (as llama-batched-bench does)
                t.clear();
                t.add(b.rand_token(), pp, 0, true);
                rc = b.decode(t, true);
                llama_memory_seq_rm(mem, 0, pp, -1);
            }
        }
        const auto t2 = clock_type::now();
        if (rc == 0 && tg_separate) {
            for (int j = 0; j < pl && rc == 0; ++j)
                for (int i = 0; i < tg && rc == 0; ++i) {
                    t.clear();
                    t.add(b.rand_token(), pp + i, j, true);
                    rc = b.decode(t, true);
                }
        } else if (rc == 0) {
            for (int i = 0; i < tg && rc == 0; ++i) {
                t.clear();
                for (int j = 0; j < pl; ++j) t.add(b.rand_token(), pp + i, j, true);
                rc = b.decode(t, true);
            }
        }
        const auto t3 = clock_type::now();
        t_tg = std::chrono::duration<double>(t3 - t2).count();
        llama_memory_clear(mem, true);
    }
    c.history().clear();
    if (rc != 0) raise_decode_error(c, rc, 0, (size_t) n_kv, mark);
    py::dict d;
    d["pp"] = pp;
    d["tg"] = tg;
    d["pl"] = pl;
    d["n_kv"] = n_kv;
    d["t_pp"] = t_pp;
    d["t_tg"] = t_tg;
    return d;
}

}  // namespace

void register_bench(py::module_ & m) {
    m.def("bench_warmup", &warmup, py::arg("context"), py::arg("seed") = 0,
          "Decode 16 random tokens (llama-batched-bench's warm-up) and clear the cache.");
    m.def("bench_row", &row, py::arg("context"), py::arg("pp"), py::arg("tg"), py::arg("pl"),
          py::arg("shared") = false, py::arg("tg_separate") = false, py::arg("kv_unified") = true,
          py::arg("seed") = 0,
          "Time one llama-batched-bench row; returns pp, tg, pl, n_kv, t_pp and t_tg (seconds).");
}

}  // namespace step35
