// The batching engine: one context, one sequence per slot, one scheduler
// thread that never touches Python.
//
// Every step runs one llama_decode whose batch carries the next token of every
// generating sequence plus prompt chunks, oldest request first, up to one
// micro-batch (n_ubatch tokens): a long prompt never stalls the streams already
// running, and prompts that arrive together get their first tokens one after
// the other instead of all at the end. Each request has its
// own sampler chain (sequence.h), stop strings and max_tokens. A request that
// gets a slot keeps the longest prefix of that slot's cached tokens that the
// cache can still serve: the KV cache of step35 cannot shift, and its
// sliding-window layers keep only a window, so a prefix is reused only when
// the window before it is still there (else the prompt is evaluated again).
// A full KV cache first drops the step's drafts, then evicts idle slots, then
// shrinks the prompt chunks, then ends the longest running sequence with
// "length"; it never returns garbage.
//
// With a draft length (MTP), the heads' draft context follows every slot
// (each batch decoded is run through the heads), the generating slots draft
// together before each step, and each slot's pending token and drafts join the
// step's batch with logits on every row. The target is sampled row by row: a
// drafted token is kept while it equals the target's own sample, so every
// emitted token is drawn exactly as without drafting (the same greedy output,
// the same seeded sample); rejected drafts leave both caches.
//
// Python submits from any thread (EngineRequest), reads text with the GIL
// released, and cancels with close(): the slot is free at the next step.
//
// Single-stream generation (step35._core.generate) is this engine with one
// slot whose scheduler runs on the caller's thread instead of its own
// (threaded=false): the same batch filler, sampling, drafting, stop and KV
// policy, one request at a time. Its slot starts from the tokens the context
// already holds in sequence 0 and leaves them there, so the next prompt
// reuses the common prefix (chat turns); the context is free again as soon
// as the request ends.
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "context.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "prompt_cache.h"
#include "rpc.h"
#include "sequence.h"
#include "wakeup.h"

namespace py = pybind11;

namespace step35 {

namespace {

enum class State { Waiting, Prompt, Generating, Done };

// One request. The scheduler thread owns the decoding state; fields read by
// Python (ready, finished, finish_reason, error, the counters) change under
// the engine's mutex.
struct Request {
    Request(int64_t id_, std::vector<llama_token> prompt_, int64_t max_tokens_, const SamplingOptions & s,
            std::vector<std::string> stop, bool render_special)
        : id(id_), prompt(std::move(prompt_)), max_tokens(max_tokens_), sampling(s),
          out(std::move(stop), render_special) {}

    const int64_t id;
    const std::vector<llama_token> prompt;
    const int64_t max_tokens;  // -1 = until the context is full
    const SamplingOptions sampling;
    TextOutput out;
    std::unique_ptr<Sampler> sampler;

    State state = State::Waiting;
    int slot = -1;
    size_t n_prompt_done = 0;  // prompt tokens in the cache
    llama_token pending = LLAMA_TOKEN_NULL;  // sampled, not yet decoded
    std::vector<llama_token> generated;
    bool cancel = false;

    std::string ready;  // text not yet handed to Python
    bool finished = false;
    FinishReason finish_reason = FinishReason::Running;
    std::string error;
    ErrorKind error_kind = ErrorKind::DecodeError;
    size_t n_cached = 0, n_evaluated = 0;
    size_t n_restored = 0;  // of n_cached: restored from the host-memory prompt cache
    size_t share_mark = 0;  // a waiting request shares this prefix: a chunk ends there and it is cached
    size_t n_copied = 0;    // of n_cached: copied from another slot
    Clock::time_point t_submit = Clock::now(), t_admit, t_prompt_done, t_first, t_end;
    bool have_first = false;
    int draft_max = 0;  // the engine's MTP draft length (0: none)
    DraftCounts drafts;
};

struct Slot {
    llama_seq_id seq = 0;
    std::vector<llama_token> cached;  // tokens in this sequence's cache, positions 0..n-1
    Checkpoints checkpoints;          // of the sliding-window layers, within `cached`
    std::shared_ptr<Request> req;
    std::vector<llama_token> drafts;  // this step's MTP drafts after the pending token
};

size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
}

class Engine {
public:
    // `n_ctx_slot`: the most tokens one sequence may hold (0 = what the context allows one sequence).
    // `cache_bytes`: bound of the host-memory prompt cache (0: none). `max_checkpoints`: window-layer
    // checkpoints kept per slot (0: none), taken just before the end of each prompt and every `checkpoint_every`
    // tokens of a long one.
    // `draft`: MTP tokens drafted per step for every generating slot (0: none; the context must have been
    // made with the MTP heads). `threaded`: the scheduler runs on its own thread; false: on the thread that
    // waits for text (EngineRequest.step), with one slot that continues sequence 0 of the context.
    Engine(std::shared_ptr<ContextHandle> ctx, size_t max_waiting, size_t n_ctx_slot, size_t cache_bytes,
           size_t max_checkpoints, size_t checkpoint_every, int draft, bool threaded = true)
        : ctx_(std::move(ctx)), max_waiting_(max_waiting), cache_(cache_bytes), max_checkpoints_(max_checkpoints),
          checkpoint_every_(std::max<size_t>(1, checkpoint_every)), draft_(draft), threaded_(threaded) {
        llama_context * c = ctx_->get();
        if (draft_ < 0) throw py::value_error("draft must be >= 0");
        if (draft_ > 0) {
            dr_ = ctx_->drafter();
            if (!dr_)
                throw py::value_error("this context has no MTP heads to draft with; make it with the model's heads "
                                      "(load the model with mtp=True), or draft=0");
            if (draft_ > dr_->n_max())
                throw py::value_error("draft=" + std::to_string(draft_) + " but the model has " +
                                      std::to_string(dr_->n_max()) + " MTP head(s): one token per head at most");
            dr_->set_draft(draft_);
        }
        guard_ = std::make_unique<BusyGuard>(*ctx_);
        n_batch_ = llama_n_batch(c);
        n_ubatch_ = std::min<size_t>(llama_n_ubatch(c), n_batch_);
        n_ctx_seq_ = llama_n_ctx_seq(c);
        if (n_ctx_slot > 0) n_ctx_seq_ = std::min(n_ctx_seq_, n_ctx_slot);
        n_swa_ = llama_model_n_swa(ctx_->model());
        prompt_budget_ = n_ubatch_;
        const uint32_t n_slots = threaded_ ? llama_n_seq_max(c) : 1;
        slots_.resize(n_slots);
        for (uint32_t i = 0; i < n_slots; ++i) slots_[i].seq = (llama_seq_id) i;
        batch_ = llama_batch_init((int32_t) n_batch_, 0, 1);
        // The one slot of a caller-run engine continues sequence 0, unless the heads must follow it and have
        // not (a prefix decoded without them is decoded again).
        Drafter * d = ctx_->drafter();
        if (!threaded_ && !ctx_->history().empty() && !(dr_ && d && !d->synced))
            slots_[0].cached = ctx_->history();
        else
            ctx_->clear();
        ctx_->interrupt().begin();
        if (threaded_) worker_ = std::thread([this] { loop(); });
    }

    ~Engine() {
        stop(true);
        if (worker_.joinable()) worker_.join();
        llama_batch_free(batch_);
    }

    Engine(const Engine &) = delete;
    Engine & operator=(const Engine &) = delete;

    // One request to queue (see submit_all).
    struct Submission {
        std::vector<llama_token> prompt;
        int64_t max_tokens;
        SamplingOptions sampling;
        std::vector<std::string> stop;
    };

    // With the GIL held: validate every request, then queue them all in one step of the
    // scheduler (all or none), so that their prompts share the first batches and they
    // generate side by side from then on.
    std::vector<std::shared_ptr<Request>> submit_all(std::vector<Submission> subs, bool render_special) {
        const llama_vocab * vocab = ctx_->vocab();
        for (const auto & sub : subs) {
            if (sub.prompt.empty()) throw py::value_error("the prompt has no tokens");
            check_tokens(vocab, sub.prompt.data(), sub.prompt.size());
            if (sub.prompt.size() >= n_ctx_seq_)
                throw Error(ErrorKind::ContextOverflowError,
                            "the prompt has " + std::to_string(sub.prompt.size()) + " tokens but " +
                                (threaded_ ? "a slot's context" : "the context") + " holds " + std::to_string(n_ctx_seq_) +
                                " (and at least one more is needed to generate); use a larger n_ctx or a shorter prompt");
        }
        std::unique_lock<std::mutex> lk(mu_);
        if (stopping_) throw Error(ErrorKind::ClosedError, "the engine is closed");
        size_t running = 0;
        for (const auto & sl : slots_) running += sl.req != nullptr;
        if (running + waiting_.size() + subs.size() > slots_.size() + max_waiting_) {  // the slots and the queue
            if (subs.size() == 1)
                throw Error(ErrorKind::QueueFullError, "the engine's wait queue is full (" +
                                                           std::to_string(max_waiting_) +
                                                           " requests waiting); retry later or raise max_waiting");
            throw Error(ErrorKind::QueueFullError,
                        std::to_string(subs.size()) + " requests do not fit: " + std::to_string(running) +
                            " running and " + std::to_string(waiting_.size()) + " waiting, of " +
                            std::to_string(slots_.size()) + " slots and a queue of " + std::to_string(max_waiting_) +
                            "; retry later or raise max_waiting");
        }
        std::vector<std::shared_ptr<Request>> reqs;
        reqs.reserve(subs.size());
        for (auto & sub : subs) {
            auto req = std::make_shared<Request>(next_id_++, std::move(sub.prompt), sub.max_tokens, sub.sampling,
                                                 std::move(sub.stop), render_special);
            req->sampler = std::make_unique<Sampler>(req->sampling, vocab, req->prompt);
            req->draft_max = draft_;
            req->drafts.reset(draft_);
            reqs.push_back(req);
        }
        for (const auto & req : reqs) waiting_.push_back(req);
        if (!threaded_) {  // the context's progress (Context.progress): tokens generated of the most it may generate
            const auto & r = *reqs.front();
            ctx_->work_done.store(0);
            ctx_->work_total.store(r.max_tokens >= 0 ? r.max_tokens : (long long) (n_ctx_seq_ - r.prompt.size()));
        }
        lk.unlock();
        work_cv_.notify_one();
        return reqs;
    }

    // Cancel one request: a waiting one ends now, a running one at the next step (a caller-run engine's
    // ends now when no thread runs it, and frees the context).
    void cancel(const std::shared_ptr<Request> & req) {
        std::unique_lock<std::mutex> lk(mu_);
        if (req->finished) return;
        if (!threaded_) {
            req->cancel = true;
            if (running_here_) {
                ctx_->interrupt().request();  // a long decode stops between graph nodes
                return;
            }
            finish_locked(*req, FinishReason::Cancelled);
            release_here_locked();
            return;
        }
        if (req->state == State::Waiting) {
            auto it = std::find(waiting_.begin(), waiting_.end(), req);
            if (it != waiting_.end()) waiting_.erase(it);
            finish_locked(*req, FinishReason::Cancelled);
            lk.unlock();
            out_cv_.notify_all();
            return;
        }
        req->cancel = true;
        lk.unlock();
        work_cv_.notify_one();
    }

    // With the GIL, before wait(): a caller-run engine watches this thread for Ctrl-C.
    void arm() {
        if (!threaded_) ctx_->interrupt().arm();
    }

    // With the GIL, after wait(): a caller-run engine stopped by Ctrl-C re-raises its KeyboardInterrupt (the
    // request has ended, cancelled).
    void rethrow_if_signalled() {
        if (!threaded_) ctx_->interrupt().rethrow_if_signalled();
    }

    // Without the GIL: wait until `req` has text (or has ended); returns the text.
    // `all`: wait for the end. Wakes every kSignalPeriod so that Ctrl-C can stop the wait.
    // A caller-run engine runs its scheduler here instead.
    std::string wait(const std::shared_ptr<Request> & req, bool all) {
        if (!threaded_) return run_here(req, all);
        std::unique_lock<std::mutex> lk(mu_);
        while (!req->finished && (all || req->ready.empty())) {
            if (out_cv_.wait_for(lk, kSignalPeriod) == std::cv_status::timeout) {
                lk.unlock();
                {
                    py::gil_scoped_acquire gil;
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                }
                lk.lock();
            }
        }
        std::string text;
        text.swap(req->ready);
        return text;
    }

    // Wake an event loop through `sock` (the write end of a socket pair; -1: none): once requests have new
    // text or have ended, one byte is written to it, and no other until take_events() has collected them.
    void notify(int64_t sock) {
        std::lock_guard<std::mutex> lk(mu_);
        notify_sock_ = sock;
        wakeup_pending_ = false;
        if (sock < 0) events_.clear();
        else if (!events_.empty()) wake_locked();
    }

    // Ids of the requests with new text or an end since the last call (never waits).
    std::vector<int64_t> take_events() {
        std::lock_guard<std::mutex> lk(mu_);
        wakeup_pending_ = false;
        std::vector<int64_t> ids;
        ids.swap(events_);
        return ids;
    }

    // Stop accepting requests; cancel the running ones (or let them finish for `timeout` seconds).
    void stop(bool cancel_running, double timeout = 0.0) {
        std::unique_lock<std::mutex> lk(mu_);
        stopping_ = true;
        if (!threaded_) {  // nothing runs it now (it is being freed): end what is left, free the context
            for (auto & s : slots_)
                if (s.req) finish_locked(*s.req, FinishReason::Cancelled);
            for (auto & r : waiting_) finish_locked(*r, FinishReason::Cancelled);
            waiting_.clear();
            release_here_locked();
            stopped_ = true;
            return;
        }
        if (!cancel_running) {
            const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                          std::chrono::duration<double>(timeout));
            work_cv_.notify_one();
            out_cv_.wait_until(lk, deadline, [this] { return stopped_ || idle_locked(); });
        }
        cancel_all_ = true;
        lk.unlock();
        ctx_->interrupt().request();  // a long decode stops between graph nodes
        work_cv_.notify_one();
    }

    void join() {
        if (worker_.joinable()) worker_.join();
        guard_.reset();
    }

    py::dict metrics() {
        std::lock_guard<std::mutex> lk(mu_);
        py::dict d;
        size_t running = 0;
        for (const auto & s : slots_) running += s.req != nullptr;
        d["slots"] = slots_.size();
        d["running"] = running;
        d["waiting"] = waiting_.size();
        d["prompt_tokens_evaluated"] = total_evaluated_;
        d["prompt_tokens_cached"] = total_cached_;
        d["generated_tokens"] = total_generated_;
        d["requests_finished"] = total_finished_;
        d["prompt_tokens_restored"] = total_restored_;
        d["checkpoint_restores"] = total_checkpoint_restores_;
        d["prompt_tokens_copied"] = total_copied_;
        size_t checkpoint_bytes = 0;
        for (const auto & sl : slots_) checkpoint_bytes += sl.checkpoints.bytes();
        d["checkpoint_bytes"] = checkpoint_bytes;
        d["prompt_cache_bytes"] = cache_.bytes();
        d["prompt_cache_entries"] = cache_.entries();
        d["prompt_cache_max_bytes"] = cache_.max_bytes();
        d["decode_steps"] = total_steps_;
        d["draft_tokens"] = total_drafted_;
        d["draft_accepted"] = total_accepted_;
        d["kv_full_events"] = total_kv_full_;
        d["closed"] = stopping_;
        return d;
    }

    std::mutex & mutex() { return mu_; }

private:
    bool idle_locked() const {
        if (!waiting_.empty()) return false;
        for (const auto & s : slots_)
            if (s.req) return false;
        return true;
    }

    void finish_locked(Request & r, FinishReason reason) {
        if (r.finished) return;
        r.finished = true;
        r.finish_reason = reason;
        r.state = State::Done;
        r.t_end = Clock::now();
        if (r.t_prompt_done == Clock::time_point{}) r.t_prompt_done = r.t_end;
        r.ready += r.out.take_all();
        ++total_finished_;
        if (r.slot >= 0) {
            slots_[(size_t) r.slot].req.reset();
            r.slot = -1;
        }
        record_locked(r.id);
    }

    // Request `id` has new text or has ended: tell the event loop (see notify).
    void record_locked(int64_t id) {
        if (notify_sock_ < 0) return;
        events_.push_back(id);
        wake_locked();
    }

    void wake_locked() {
        if (wakeup_pending_) return;
        wakeup_pending_ = send_wakeup(notify_sock_);  // a full socket already holds a wake-up
    }

    // The prefix of `prompt` that slot `s`'s cache can serve: sliding-window layers must still hold
    // the window before it, or a checkpoint restore it (the last prompt token is always evaluated:
    // it gives the logits).
    size_t servable_by(llama_memory_t mem, const Slot & s, const std::vector<llama_token> & prompt) const {
        const size_t lcp = std::min(common_prefix(s.cached, prompt), prompt.size() - 1);
        return servable(lcp, lcp > 0 ? llama_memory_seq_pos_min(mem, s.seq) : 0, s.checkpoints, n_swa_);
    }

    // Before a slot's conversation is cut to `keep` tokens: save it to the prompt cache when that drops
    // enough of it to matter (another conversation takes the slot, not the same one's next turn).
    void save_conversation(Slot & s, size_t keep) {
        if (s.cached.size() >= keep + kMinSaveDrop) cache_.save(ctx_->get(), s.seq, s.cached, s.checkpoints);
    }

    // Where a prompt's last checkpoint goes: a few tokens before its end, before the template's
    // generation prompt, which the next turn renders differently when a client drops the reasoning
    // (0: no checkpoints).
    size_t checkpoint_mark(const Request & r) const {
        if (n_swa_ == 0 || max_checkpoints_ == 0 || r.prompt.size() < kMinShare) return 0;  // short: cheap again
        return r.prompt.size() - kCheckpointTail;
    }

    // Make slot `to` hold what slot `from` holds (its sequence state, tokens and checkpoints).
    bool copy_slot(llama_context * c, const Slot & from, Slot & to) {
        llama_memory_seq_rm(llama_get_memory(c), to.seq, -1, -1);
        if (dr_) dr_->remove_from(0, to.seq);  // the heads' cache is not copied: their drafts start over
        to.cached.clear();
        to.checkpoints.items.clear();
        const size_t size = llama_state_seq_get_size_ext(c, from.seq, LLAMA_STATE_SEQ_FLAGS_NONE);
        std::vector<uint8_t> state(size);
        if (size == 0 || llama_state_seq_get_data_ext(c, state.data(), size, from.seq, LLAMA_STATE_SEQ_FLAGS_NONE) == 0 ||
            llama_state_seq_set_data_ext(c, state.data(), state.size(), to.seq, LLAMA_STATE_SEQ_FLAGS_NONE) == 0) {
            llama_memory_seq_rm(llama_get_memory(c), to.seq, -1, -1);
            return false;
        }
        to.cached = from.cached;
        to.checkpoints = from.checkpoints;
        return true;
    }

    // Cut slot `s` back to its first `keep` tokens, restoring the window layers from the checkpoint at
    // `keep` when they no longer hold the window before it; returns what it keeps (0: cleared).
    size_t cut_to(llama_context * c, Slot & s, size_t keep) {
        llama_memory_t mem = llama_get_memory(c);
        bool window_gone = false;
        if (keep > 0 && n_swa_ > 0)
            window_gone = llama_memory_seq_pos_min(mem, s.seq) > std::max<llama_pos>(0, (llama_pos) keep - n_swa_);
        if (window_gone) {
            const Checkpoint * cp = s.checkpoints.at_or_before(keep);
            if (cp == nullptr || cp->n != keep || !restore_checkpoint(c, s.seq, *cp)) keep = 0;
            else ++total_checkpoint_restores_;
        } else if (keep > 0 && !llama_memory_seq_rm(mem, s.seq, (llama_pos) keep, -1)) {
            keep = 0;
        }
        if (keep == 0) llama_memory_seq_rm(mem, s.seq, -1, -1);
        if (dr_) dr_->remove_from((llama_pos) keep, s.seq);
        s.cached.resize(keep);
        s.checkpoints.cut(keep);
        return keep;
    }

    // Whether `req` should wait for a request whose prompt is being evaluated and shares a longer prefix
    // with it than `served` (what a slot or the cache can serve now): that one's chunks end at the shared
    // prefix, which goes to the prompt cache, and `req` is admitted from there a step later. So requests
    // that arrive together evaluate their shared prefix once.
    bool wait_for_shared_prefix(const Request & req, size_t served) {
        if (cache_.max_bytes() == 0) return false;
        for (auto & s : slots_) {
            if (!s.req || s.req->state != State::Prompt) continue;
            Request & other = *s.req;
            const size_t shared = std::min(common_prefix(other.prompt, req.prompt), req.prompt.size() - 1);
            if (shared < kMinShare || shared <= served + kMinRestoreGain || other.n_prompt_done >= shared) continue;
            if (other.share_mark == 0 || other.share_mark > shared) other.share_mark = shared;
            return true;
        }
        return false;
    }

    // Give waiting requests free slots: the slot, or the conversation in the prompt cache, that serves
    // the longest prefix of the prompt; a conversation that a request cuts is saved to the cache first.
    void admit_locked() {
        llama_context * c = ctx_->get();
        llama_memory_t mem = llama_get_memory(c);
        while (!waiting_.empty()) {
            const std::shared_ptr<Request> req = waiting_.front();
            int best = -1, empty = -1;
            size_t best_keep = 0;
            for (size_t i = 0; i < slots_.size(); ++i) {
                if (slots_[i].req) continue;
                const size_t keep = servable_by(mem, slots_[i], req->prompt);
                // on a tie, the slot with less to lose
                if (best < 0 || keep > best_keep ||
                    (keep == best_keep && slots_[i].cached.size() < slots_[(size_t) best].cached.size())) {
                    best = (int) i;
                    best_keep = keep;
                }
                if (empty < 0 && slots_[i].cached.empty()) empty = (int) i;
            }
            if (best < 0) return;
            auto [entry, entry_lcp] = cache_.best(req->prompt, n_swa_);
            if (wait_for_shared_prefix(*req, std::max(best_keep, entry_lcp))) return;
            waiting_.pop_front();
            bool restored = false;
            if (entry >= 0 && std::min(entry_lcp, req->prompt.size() - 1) > best_keep + kMinRestoreGain) {
                const int target = empty >= 0 ? empty : best;  // an empty slot loses nothing
                Slot & t = slots_[(size_t) target];
                save_conversation(t, 0);
                std::tie(entry, entry_lcp) = cache_.best(req->prompt, n_swa_);  // saving may have dropped entries
                llama_memory_seq_rm(mem, t.seq, -1, -1);
                if (dr_) dr_->remove_from(0, t.seq);  // a restored conversation has no heads' cache: drafts start over
                t.cached.clear();
                t.checkpoints.items.clear();
                if (entry >= 0) restored = cache_.restore(c, t.seq, (size_t) entry, &t.cached, &t.checkpoints);
                best = target;
            }
            bool copied = false;
            if (!restored) {  // a busy slot holding a longer servable prefix: copy its sequence
                int source = -1;
                size_t source_keep = std::max(best_keep, std::min(entry_lcp, req->prompt.size() - 1));
                for (size_t i = 0; i < slots_.size(); ++i)
                    if (slots_[i].req) {
                        const size_t keep = servable_by(mem, slots_[i], req->prompt);
                        if (keep > source_keep + kMinRestoreGain) {
                            source = (int) i;
                            source_keep = keep;
                        }
                    }
                if (source >= 0) {
                    const int target = empty >= 0 ? empty : best;
                    save_conversation(slots_[(size_t) target], 0);
                    copied = copy_slot(c, slots_[(size_t) source], slots_[(size_t) target]);
                    best = target;
                }
            }
            Slot & s = slots_[(size_t) best];
            // what the slot serves now (after a restore or copy; a failed one left it empty)
            size_t keep = servable_by(mem, s, req->prompt);
            if (!restored && !copied) save_conversation(s, keep);
            keep = cut_to(c, s, keep);
            s.req = req;
            req->slot = best;
            req->state = State::Prompt;
            req->n_prompt_done = keep;
            req->n_cached = keep;
            req->n_restored = restored ? keep : 0;
            req->n_copied = copied ? keep : 0;
            total_copied_ += req->n_copied;
            req->t_admit = Clock::now();
            total_cached_ += keep;
            total_restored_ += req->n_restored;
        }
    }

    void evict_idle_locked(llama_memory_t mem, bool * evicted) {
        for (auto & s : slots_) {
            if (!s.req && !s.cached.empty()) {
                llama_memory_seq_rm(mem, s.seq, -1, -1);
                if (dr_) dr_->remove_from(0, s.seq);
                s.cached.clear();
                s.checkpoints.items.clear();
                *evicted = true;
            }
        }
    }

    struct Entry {
        Slot * slot;
        size_t n;        // tokens of this slot in the batch
        int32_t output;  // batch index of its logits, -1 = none
        bool prompt;
    };

    void add(llama_token t, llama_pos pos, llama_seq_id seq, bool logits) { batch_add(batch_, t, pos, seq, logits); }

    // Prompt tokens a step may carry beside `n_generating` tokens of running sequences: what fills one
    // micro-batch (llama_decode computes a batch one n_ubatch at a time anyway), so that the oldest prompt
    // finishes (and its first token comes) before the next one starts, and the running sequences get a token
    // every micro-batch; at least half a micro-batch when the running ones fill it, and never over n_batch.
    size_t prompt_room(size_t n_generating) const {
        const size_t room = n_generating < n_ubatch_ ? n_ubatch_ - n_generating : 0;
        return std::min(std::max(room, n_ubatch_ / 2), n_batch_ > n_generating ? n_batch_ - n_generating : 0);
    }

    // MTP tokens to draft after slot `s`'s pending token this step: the engine's draft length, within what
    // the request may still generate, what its context holds after them, and `room` rows of the batch.
    size_t draft_count(const Slot & s, const Request & r, size_t room) const {
        if (!dr_ || no_drafts_) return 0;
        int64_t k = draft_;
        if (r.max_tokens >= 0) k = std::min<int64_t>(k, r.max_tokens - (int64_t) r.generated.size() - 1);
        k = std::min<int64_t>(k, (int64_t) n_ctx_seq_ - (int64_t) s.cached.size() - 2);
        k = std::min<int64_t>(k, (int64_t) room);
        return (size_t) std::max<int64_t>(k, 0);
    }

    // The one batch filler: each entry's rows, in order (a generating slot's pending token and its drafts,
    // every row with logits; a prompt chunk, logits only for the prompt's last token). Sets each entry's
    // row count and first logits row.
    void fill_batch(std::vector<Entry> & entries) {
        batch_.n_tokens = 0;
        for (auto & e : entries) {
            Slot & s = *e.slot;
            Request & r = *s.req;
            if (!e.prompt) {
                const llama_pos pos = (llama_pos) s.cached.size();
                e.output = batch_.n_tokens;
                e.n = 1 + s.drafts.size();
                add(r.pending, pos, s.seq, true);
                for (size_t i = 0; i < s.drafts.size(); ++i) add(s.drafts[i], pos + 1 + (llama_pos) i, s.seq, true);
                continue;
            }
            const bool last = r.n_prompt_done + e.n == r.prompt.size();
            for (size_t i = 0; i < e.n; ++i)
                add(r.prompt[r.n_prompt_done + i], (llama_pos) (r.n_prompt_done + i), s.seq, last && i == e.n - 1);
            e.output = last ? batch_.n_tokens - 1 : -1;
        }
    }

    // Sample entry `e`'s rows in turn (outside the lock: only this thread uses samplers): a drafted token
    // is kept while it equals the target's own sample; the first sample that differs (or the one after the
    // last draft) ends the list. Each token is drawn exactly as without drafting.
    std::vector<llama_token> verify(llama_context * c, const llama_vocab * vocab, const Entry & e) {
        const Slot & s = *e.slot;
        const size_t nd = e.prompt ? 0 : s.drafts.size();
        std::vector<llama_token> toks;
        for (size_t i = 0; i <= nd; ++i) {
            const llama_token tok = s.req->sampler->sample(c, e.output + (int32_t) i);
            toks.push_back(tok);
            if (i == nd || tok != s.drafts[i] || llama_vocab_is_eog(vocab, tok)) break;
        }
        return toks;
    }

    // Hand out the tokens sampled for slot `s` (the first `nd` rows were drafts): kept drafts are in the
    // cache already; the last token is the next one to decode, unless the request ends first.
    void emit_locked(Slot & s, size_t nd, const std::vector<llama_token> & toks) {
        const std::shared_ptr<Request> hold = s.req;  // finishing frees the slot
        Request & r = *hold;
        const llama_vocab * vocab = ctx_->vocab();
        size_t accepted = 0;
        for (size_t i = 0; i < toks.size(); ++i) {
            const llama_token tok = toks[i];
            if (r.max_tokens >= 0 && (int64_t) r.generated.size() >= r.max_tokens) {  // max_tokens=0
                finish_locked(r, FinishReason::Length);
                break;
            }
            if (!r.have_first) {
                r.have_first = true;
                r.t_first = Clock::now();
            }
            if (llama_vocab_is_eog(vocab, tok)) {
                finish_locked(r, FinishReason::Stop);
                break;
            }
            const bool kept = i < nd && tok == s.drafts[i];
            if (kept) {
                s.cached.push_back(tok);
                ++accepted;
            }
            r.generated.push_back(tok);
            ++total_generated_;
            if (!threaded_) ctx_->work_done.store((long long) r.generated.size(), std::memory_order_relaxed);
            if (r.out.append(vocab, tok)) {
                finish_locked(r, FinishReason::Stop);
                break;
            }
            r.ready += r.out.take_ready();
            if ((r.max_tokens >= 0 && (int64_t) r.generated.size() >= r.max_tokens) ||
                s.cached.size() - (kept ? 1 : 0) + 1 >= n_ctx_seq_) {
                finish_locked(r, FinishReason::Length);
                break;
            }
            if (!kept) {
                r.pending = tok;
                break;
            }
        }
        if (nd > 0) {
            r.drafts.step(nd, accepted);
            total_drafted_ += nd;
            total_accepted_ += accepted;
            dr_->accept((int) accepted, s.seq);
        }
        if (!r.finished && !r.ready.empty()) record_locked(r.id);
    }

    // The scheduler thread.
    void loop() {
        std::unique_lock<std::mutex> lk(mu_);
        while (true) {
            if (step_locked(lk)) continue;
            if (stopping_) break;
            work_cv_.wait(lk);
        }
        stopped_ = true;
        lk.unlock();
        out_cv_.notify_all();
    }

    // A caller-run engine's scheduler, on the thread that waits for `req` (without the GIL): steps until
    // it has text, or until it ends with `all`. Looks for a stop request (close() from another thread) or
    // Ctrl-C between steps; a long decode stops between graph nodes.
    std::string run_here(const std::shared_ptr<Request> & req, bool all) {
        std::unique_lock<std::mutex> lk(mu_);
        running_here_ = true;
        while (!req->finished && (all || req->ready.empty())) {
            lk.unlock();
            const bool stop = ctx_->interrupt().should_stop();  // may take the GIL: not under the lock
            lk.lock();
            if (stop) req->cancel = true;
            if (!step_locked(lk) && !req->finished) {  // cannot happen: its one slot is free for it
                req->error = "the engine has no slot for the request";
                finish_locked(*req, FinishReason::Error);
            }
        }
        running_here_ = false;
        if (req->finished) release_here_locked();
        std::string text;
        text.swap(req->ready);
        return text;
    }

    // A caller-run engine whose request has ended: its slot's tokens become the context's sequence 0, and
    // the context is free for other calls.
    void release_here_locked() {
        if (threaded_ || !guard_) return;
        ctx_->history() = slots_[0].cached;
        if (Drafter * d = ctx_->drafter()) d->synced = dr_ != nullptr;  // the heads followed this slot, or not
        ctx_->work_done.store(0);
        ctx_->work_total.store(0);
        guard_.reset();
    }

    // One scheduler step (with the lock; it is released while decoding and sampling): cancel what was
    // cancelled, admit waiting requests, then decode one batch and hand out its tokens. Returns false when
    // there is nothing to do.
    bool step_locked(std::unique_lock<std::mutex> & lk) {
        llama_context * c = ctx_->get();
        llama_memory_t mem = llama_get_memory(c);
        const llama_vocab * vocab = ctx_->vocab();
        auto & entries = entries_;
        auto & prompting = prompting_;
        auto & wants = wants_;
        auto & sampled = sampled_;
        auto & failed = failed_;
        size_t & prompt_budget = prompt_budget_;
        {
            for (auto & s : slots_)
                if (s.req && (s.req->cancel || cancel_all_)) finish_locked(*s.req, FinishReason::Cancelled);
            if (cancel_all_) {
                for (auto & r : waiting_) finish_locked(*r, FinishReason::Cancelled);
                waiting_.clear();
            }
            out_cv_.notify_all();
            admit_locked();
            if (idle_locked()) return false;

            // The batch: every generating slot's next token (with its MTP drafts), then prompt chunks.
            entries.clear();
            wants.clear();
            size_t rows = 0;
            for (auto & s : slots_) {
                if (!s.req || s.req->state != State::Generating) continue;
                if (rows >= n_batch_) break;  // more slots than n_batch: the rest next step
                const size_t k = draft_count(s, *s.req, n_batch_ - rows - 1);
                s.drafts.clear();
                if (k > 0)
                    wants.push_back({s.seq, s.req->pending, (llama_pos) s.cached.size(), (int) k, &s.cached, &s.drafts});
                entries.push_back({&s, 1, -1, false});
                rows += 1 + k;
            }
            size_t budget = std::min(prompt_budget, prompt_room(rows));
            prompting.clear();
            for (auto & s : slots_)
                if (s.req && s.req->state == State::Prompt) prompting.push_back(&s);
            std::sort(prompting.begin(), prompting.end(), [](const Slot * a, const Slot * b) { return a->req->id < b->req->id; });
            for (Slot * sp : prompting) {
                if (budget == 0) break;
                Slot & s = *sp;
                Request & r = *s.req;
                size_t n = std::min(budget, r.prompt.size() - r.n_prompt_done);
                const size_t every = checkpoint_mark(r) > 0 ? (r.n_prompt_done / checkpoint_every_ + 1) * checkpoint_every_ : 0;
                for (const size_t mark : {r.share_mark, checkpoint_mark(r), every})  // chunks end at these marks
                    if (r.n_prompt_done < mark && r.n_prompt_done + n > mark) n = mark - r.n_prompt_done;
                entries.push_back({&s, n, -1, true});
                budget -= n;
            }
            if (entries.empty()) {  // prompts were held back for running ones that have ended
                prompt_budget = n_ubatch_;
                return true;
            }

            lk.unlock();
            if (!wants.empty()) dr_->draft(wants);  // the heads run for every drafting slot at once
            fill_batch(entries);
            int rc = llama_decode(c, batch_);
            std::string rpc_error;
            try {
                rpc_check(c, ctx_->model());
            } catch (const Error & err) {
                rpc_error = err.what();
            }
            // the heads' cache follows every sequence: they see every batch the target decodes
            const bool heads_failed = rc == 0 && rpc_error.empty() && dr_ && !dr_->process(batch_);
            // (may take the GIL on a caller-run engine's thread: not under the lock)
            const bool heads_stopped = heads_failed && ctx_->interrupt().should_stop();
            lk.lock();
            ++total_steps_;

            if (!rpc_error.empty()) {  // an RPC worker went away: this step's results cannot be used
                for (const auto & e : entries) llama_memory_seq_rm(mem, e.slot->seq, (llama_pos) e.slot->cached.size(), -1);
                for (auto & s : slots_)
                    if (s.req) {
                        s.req->error = rpc_error;
                        s.req->error_kind = ErrorKind::RPCError;
                        finish_locked(*s.req, FinishReason::Error);
                    }
                return true;
            }

            if (heads_failed) {
                for (const auto & e : entries) dr_->remove_from((llama_pos) e.slot->cached.size(), e.slot->seq);
                rc = heads_stopped ? 2 : 3;
            }
            if (rc != 0) {
                // Whatever part of the batch was processed comes out again.
                for (const auto & e : entries) llama_memory_seq_rm(mem, e.slot->seq, (llama_pos) e.slot->cached.size(), -1);
                if (rc == 2 || cancel_all_) {  // aborted (closing, or a caller-run request stopped): go on to cancel
                    if (threaded_) ctx_->interrupt().reset();
                    return true;
                }
                if (rc == 1) {  // no room in the KV cache
                    ++total_kv_full_;
                    if (!wants.empty()) {  // first, a step without drafts
                        no_drafts_ = true;
                        return true;
                    }
                    bool evicted = false;
                    evict_idle_locked(mem, &evicted);
                    if (evicted) return true;
                    const bool had_prompt =
                        std::any_of(entries.begin(), entries.end(), [](const Entry & e) { return e.prompt; });
                    const bool had_gen =
                        std::any_of(entries.begin(), entries.end(), [](const Entry & e) { return !e.prompt; });
                    if (had_prompt && prompt_budget > 1) {  // smaller prompt chunks
                        prompt_budget /= 2;
                        return true;
                    }
                    if (had_prompt && had_gen) {  // prompts wait a step; the running ones go on
                        prompt_budget = 0;
                        return true;
                    }
                    // Nothing left to shrink and still no room: end the longest sequence.
                    Slot * longest = nullptr;
                    for (auto & s : slots_)
                        if (s.req && (!longest || s.cached.size() > longest->cached.size())) longest = &s;
                    if (longest) finish_locked(*longest->req, FinishReason::Length);
                    prompt_budget = n_ubatch_;
                    return true;
                }
                const std::string msg = rc == 3 ? "the MTP heads failed on a batch of " + std::to_string(batch_.n_tokens) +
                                                      " tokens"
                                                : "llama_decode failed with code " + std::to_string(rc) +
                                                      " on a batch of " + std::to_string(batch_.n_tokens) + " tokens";
                for (auto & s : slots_)
                    if (s.req) {
                        s.req->error = msg;
                        finish_locked(*s.req, FinishReason::Error);
                    }
                return true;
            }
            prompt_budget = n_ubatch_;
            no_drafts_ = false;

            // Commit, then sample where there are logits (outside the lock: only this thread uses samplers).
            const auto now = Clock::now();
            for (const auto & e : entries) {
                Slot & s = *e.slot;
                Request & r = *s.req;
                if (e.prompt) {
                    s.cached.insert(s.cached.end(), r.prompt.begin() + (long) r.n_prompt_done,
                                    r.prompt.begin() + (long) (r.n_prompt_done + e.n));
                    r.n_prompt_done += e.n;
                    r.n_evaluated += e.n;
                    total_evaluated_ += e.n;
                    const size_t last = s.checkpoints.items.empty() ? 0 : s.checkpoints.items.back().n;
                    if (n_swa_ > 0 && (r.n_prompt_done == checkpoint_mark(r) ||
                                       s.cached.size() >= last + checkpoint_every_))
                        s.checkpoints.take(c, s.seq, s.cached.size(), max_checkpoints_);
                    if (r.share_mark > 0 && r.n_prompt_done == r.share_mark) {  // the shared prefix, for the waiting
                        cache_.save(c, s.seq, s.cached, s.checkpoints);
                        r.share_mark = 0;
                    }
                    if (e.output >= 0) {
                        r.state = State::Generating;
                        r.t_prompt_done = now;
                    }
                } else {
                    s.cached.push_back(r.pending);
                    r.pending = LLAMA_TOKEN_NULL;
                }
            }
            lk.unlock();
            sampled.clear();
            failed.clear();
            for (const auto & e : entries) {
                if (e.output < 0) continue;
                try {
                    sampled.push_back({e, verify(c, vocab, e)});
                } catch (const Error & err) {
                    failed.push_back({e, err});
                }
            }
            lk.lock();
            for (auto & [e, err] : failed) {
                if (!e.slot->req) continue;
                e.slot->req->error = err.what();
                e.slot->req->error_kind = err.kind;
                finish_locked(*e.slot->req, FinishReason::Error);
            }
            for (auto & [e, toks] : sampled) {
                if (e.slot->req) emit_locked(*e.slot, e.prompt ? 0 : e.slot->drafts.size(), toks);
            }
            for (const auto & e : entries) {  // rejected drafts leave both caches
                if (e.prompt || e.n == 1) continue;
                llama_memory_seq_rm(mem, e.slot->seq, (llama_pos) e.slot->cached.size(), -1);
                dr_->remove_from((llama_pos) e.slot->cached.size(), e.slot->seq);
            }
        }
        return true;
    }

    std::shared_ptr<ContextHandle> ctx_;
    std::unique_ptr<BusyGuard> guard_;
    size_t max_waiting_;
    size_t n_batch_ = 0, n_ubatch_ = 0, n_ctx_seq_ = 0;
    llama_pos n_swa_ = 0;
    llama_batch batch_{};

    std::mutex mu_;
    std::condition_variable work_cv_, out_cv_;
    std::deque<std::shared_ptr<Request>> waiting_;
    std::vector<Slot> slots_;
    int64_t next_id_ = 1;
    bool stopping_ = false, cancel_all_ = false, stopped_ = false;
    int64_t notify_sock_ = -1;     // the event loop's socket (notify)
    bool wakeup_pending_ = false;  // a byte was written and its events are not taken yet
    std::vector<int64_t> events_;
    size_t total_evaluated_ = 0, total_cached_ = 0, total_generated_ = 0, total_finished_ = 0, total_steps_ = 0,
           total_kv_full_ = 0;
    size_t total_restored_ = 0, total_checkpoint_restores_ = 0, total_copied_ = 0;
    size_t total_drafted_ = 0, total_accepted_ = 0;
    PromptCache cache_;
    size_t max_checkpoints_;   // per slot
    size_t checkpoint_every_;  // tokens of a long prompt between checkpoints
    int draft_ = 0;           // MTP tokens drafted per step (0: none)
    Drafter * dr_ = nullptr;  // the context's drafter when draft_ > 0
    bool no_drafts_ = false;  // the KV cache was full: one step without drafts
    const bool threaded_;       // false: the scheduler runs on the thread that waits (run_here)
    bool running_here_ = false;  // a thread is in run_here
    // the scheduler's working lists, kept between steps to reuse their memory
    size_t prompt_budget_ = 0;
    std::vector<Entry> entries_;
    std::vector<Slot *> prompting_;
    std::vector<Drafter::Want> wants_;
    std::vector<std::pair<Entry, std::vector<llama_token>>> sampled_;
    std::vector<std::pair<Entry, Error>> failed_;  // e.g. a grammar that allows no token
    // a cut that drops fewer tokens is the same conversation's next turn, not worth a copy
    static constexpr size_t kMinSaveDrop = 32;
    // a request waits for another's prompt only for a shared prefix of at least this many tokens
    static constexpr size_t kMinShare = 256;
    // the last checkpoint of a prompt is this many tokens before its end
    static constexpr size_t kCheckpointTail = 4;
    // a restore must serve this many more tokens than the best slot can
    static constexpr size_t kMinRestoreGain = 16;
    std::thread worker_;
};

// What Python holds for one request, of a batching engine or of a single-stream
// generation (the generation protocol: step, close, finished, finish_reason,
// stop_sequence, tokens, stats), read by step35.generation's streams and results.
class EngineRequest {
public:
    EngineRequest(std::shared_ptr<Engine> engine, std::shared_ptr<Request> req)
        : engine_(std::move(engine)), req_(std::move(req)) {}
    ~EngineRequest() {
        if (engine_) engine_->cancel(req_);
    }

    // Wait (GIL released) until text is ready, or for the end with `all`.
    py::str step(bool all) {
        std::string text;
        engine_->arm();
        {
            py::gil_scoped_release nogil;
            try {
                text = engine_->wait(req_, all);
            } catch (py::error_already_set &) {
                py::gil_scoped_acquire gil;
                engine_->cancel(req_);
                throw;
            }
        }
        engine_->rethrow_if_signalled();  // Ctrl-C stopped a caller-run request (it ended, cancelled)
        std::string error;
        ErrorKind kind;
        {
            std::lock_guard<std::mutex> lk(engine_->mutex());
            error = req_->error;
            kind = req_->error_kind;
            if (!error.empty()) error_raised_ = true;
        }
        if (!error.empty()) throw Error(kind, error);
        return decode_utf8(text);
    }

    // Text ready now, without waiting.
    py::str poll() {
        std::string text;
        {
            std::lock_guard<std::mutex> lk(engine_->mutex());
            text.swap(req_->ready);
        }
        return decode_utf8(text);
    }

    void close() {
        closed_ = true;
        engine_->cancel(req_);
    }

    int64_t id() const { return req_->id; }
    // Ended, and its text all handed out (or the request was closed).
    bool finished() {
        std::lock_guard<std::mutex> lk(engine_->mutex());
        // A request that failed is finished once its error has been raised by step().
        return closed_ || (req_->finished && req_->ready.empty() && (req_->error.empty() || error_raised_));
    }
    FinishReason finish_reason() {
        std::lock_guard<std::mutex> lk(engine_->mutex());
        if (req_->finished) return req_->finish_reason;
        return closed_ ? FinishReason::Cancelled : FinishReason::Running;  // closed: the engine ends it at its next step
    }
    py::object stop_sequence() {
        std::string matched;
        {
            std::lock_guard<std::mutex> lk(engine_->mutex());
            if (req_->finished) matched = req_->out.matched();
        }
        if (matched.empty()) return py::none();
        return py::str(matched);
    }
    std::vector<llama_token> tokens() {
        std::lock_guard<std::mutex> lk(engine_->mutex());
        return req_->generated;
    }
    Stats stats() {
        std::lock_guard<std::mutex> lk(engine_->mutex());
        const Request & r = *req_;
        Stats st;
        const auto end = r.finished ? r.t_end : Clock::now();
        const bool admitted = r.t_admit != Clock::time_point{};
        const bool prompt_done = r.t_prompt_done != Clock::time_point{};
        st.prompt_tokens = r.prompt.size();
        st.prompt_tokens_evaluated = r.n_evaluated;
        st.prompt_tokens_cached = r.n_cached;
        st.prompt_tokens_restored = r.n_restored;
        st.prompt_tokens_copied = r.n_copied;
        st.queue_ms = admitted ? ms_between(r.t_submit, r.t_admit) : ms_between(r.t_submit, end);
        st.prompt_ms = admitted && prompt_done ? ms_between(r.t_admit, r.t_prompt_done) : 0.0;
        st.generated_tokens = r.generated.size();
        st.generation_ms = prompt_done ? ms_between(r.t_prompt_done, end) : 0.0;
        st.ttft_ms = r.have_first ? ms_between(r.t_submit, r.t_first) : 0.0;
        if (r.draft_max > 0) r.drafts.fill(st, r.draft_max);
        return st;
    }

private:
    std::shared_ptr<Engine> engine_;
    std::shared_ptr<Request> req_;
    bool closed_ = false;
    bool error_raised_ = false;  // guarded by the engine mutex
};

// Single-stream generation: an engine with one slot over `ctx`, run by the thread that reads its text.
std::unique_ptr<EngineRequest> generate(const std::shared_ptr<ContextHandle> & ctx, std::vector<llama_token> prompt,
                                        int64_t max_tokens, const SamplingOptions & sampling,
                                        std::vector<std::string> stop, bool render_special, int draft) {
    auto engine = std::make_shared<Engine>(ctx, 0, 0, 0, 0, 1, draft, false);
    std::vector<Engine::Submission> subs;
    subs.push_back({std::move(prompt), max_tokens, sampling, std::move(stop)});
    auto reqs = engine->submit_all(std::move(subs), render_special);
    return std::make_unique<EngineRequest>(engine, std::move(reqs.front()));
}

}  // namespace

void register_engine(py::module_ & m) {
    py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine", "Continuous batching over one context (use step35.Engine).")
        .def(py::init<std::shared_ptr<ContextHandle>, size_t, size_t, size_t, size_t, size_t, int>(),
             py::arg("context"), py::arg("max_waiting") = 64, py::arg("n_ctx_slot") = 0, py::arg("cache_bytes") = 0,
             py::arg("max_checkpoints") = 32, py::arg("checkpoint_every") = 2048, py::arg("draft") = 0)
        .def("submit_all",
             [](const std::shared_ptr<Engine> & e,
                std::vector<std::tuple<std::vector<llama_token>, int64_t, SamplingOptions, std::vector<std::string>>> items,
                bool render_special) {
                 std::vector<Engine::Submission> subs;
                 subs.reserve(items.size());
                 for (auto & [prompt, max_tokens, sampling, stop] : items)
                     subs.push_back({std::move(prompt), max_tokens, sampling, std::move(stop)});
                 std::vector<std::unique_ptr<EngineRequest>> out;
                 for (auto & req : e->submit_all(std::move(subs), render_special))
                     out.push_back(std::make_unique<EngineRequest>(e, std::move(req)));
                 return out;
             },
             py::arg("requests"), py::arg("render_special") = true,
             "Queue (prompt, max_tokens, sampling, stop) requests together, all or none (QueueFullError when "
             "they do not all fit); their prompts share the first batches. Returns their handles, in order.")
        .def("notify", &Engine::notify, py::arg("sock"),
             "Write one byte to the socket `sock` (a fileno; -1: none) whenever requests have new text or "
             "have ended and the last byte's events were taken: an event loop reads the other end.")
        .def("take_events", &Engine::take_events,
             "Ids of the requests with new text or an end since the last call (never waits).")
        .def("stop", &Engine::stop, py::arg("cancel"), py::arg("timeout") = 0.0,
             py::call_guard<py::gil_scoped_release>(),
             "Stop accepting requests; cancel the running ones, or let them finish for timeout seconds first.")
        .def("join", &Engine::join, py::call_guard<py::gil_scoped_release>(),
             "Wait for the scheduler thread to end (after stop) and free the context for other calls.")
        .def("metrics", &Engine::metrics);

    py::class_<EngineRequest>(m, "EngineRequest", "One request of an Engine (the Generation protocol).")
        .def("step", &EngineRequest::step, py::arg("all") = false,
             "Wait (GIL released) until text is ready, or for the end with all=True; returns the text.")
        .def("poll", &EngineRequest::poll, "The text ready now, without waiting.")
        .def("close", &EngineRequest::close, "Cancel the request (its slot is free at the next step).")
        .def_property_readonly("id", &EngineRequest::id)
        .def_property_readonly("finished", &EngineRequest::finished)
        .def_property_readonly("finish_reason", &EngineRequest::finish_reason)
        .def_property_readonly("stop_sequence", &EngineRequest::stop_sequence,
                               "The stop string that ended the request (None: another reason, or running).")
        .def_property_readonly("tokens", &EngineRequest::tokens)
        .def("stats", &EngineRequest::stats);

    m.def("generate", &generate, py::arg("context"), py::arg("prompt"), py::arg("max_tokens"), py::arg("sampling"),
          py::arg("stop"), py::arg("render_special") = true, py::arg("draft") = 0,
          "Start generating from `prompt` on `context` (use step35.Model.generate): one engine slot that "
          "continues the context's sequence 0, its scheduler run by the thread that reads the text (step). "
          "max_tokens -1: until the context is full; draft: MTP tokens drafted per step (0: off).");
}

}  // namespace step35
