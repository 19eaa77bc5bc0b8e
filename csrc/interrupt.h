// Stopping long native work from Python.
//
// An Interrupt is checked by the token loop between tokens and by ggml's abort
// callback between graph nodes, with the GIL released. request() (any thread,
// e.g. a generator's close()) stops the work at the next check. On the Python
// thread that started the work, should_stop() also looks for pending signals
// (Ctrl-C) at most every 50 ms, briefly taking the GIL; the KeyboardInterrupt
// that the signal handler raises is kept and re-raised when the native call
// returns (rethrow_if_signalled).
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

namespace step35 {

// How often native work that runs on a Python thread looks for pending signals (Ctrl-C).
constexpr auto kSignalPeriod = std::chrono::milliseconds(50);

class Interrupt {
public:
    // Call with the GIL held, on the thread that will do the work: clears a
    // previous stop request and arms the signal check for this thread.
    void begin();
    // Like begin() but keeps a pending stop request (resuming a stream).
    void arm();
    // Any thread, no GIL needed.
    void request() { stop_.store(true, std::memory_order_relaxed); }
    // Any thread, no GIL needed: forget a stop request (keeps the owner thread).
    void reset() { stop_.store(false, std::memory_order_relaxed); }
    // Called from the working thread without the GIL.
    bool should_stop();
    // True when the stop came from a Python signal handler (Ctrl-C).
    bool signalled() const { return error_ != nullptr; }
    // With the GIL held: re-raise the exception the signal handler raised.
    void rethrow_if_signalled();
    // ggml_abort_callback trampoline (data = Interrupt*).
    static bool ggml_abort(void * data) { return static_cast<Interrupt *>(data)->should_stop(); }

private:
    std::atomic<bool> stop_{false};
    std::thread::id owner_;
    std::chrono::steady_clock::time_point next_check_;
    std::unique_ptr<pybind11::error_already_set> error_;
};

}  // namespace step35
