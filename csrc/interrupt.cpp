#include "interrupt.h"

namespace py = pybind11;

namespace step35 {

void Interrupt::begin() {
    stop_.store(false, std::memory_order_relaxed);
    arm();
}

void Interrupt::arm() {
    error_.reset();
    owner_ = std::this_thread::get_id();
    next_check_ = std::chrono::steady_clock::now() + kSignalPeriod;
}

bool Interrupt::should_stop() {
    if (stop_.load(std::memory_order_relaxed)) return true;
    if (std::this_thread::get_id() != owner_) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_check_) return false;
    next_check_ = now + kSignalPeriod;
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
        error_ = std::make_unique<py::error_already_set>();
        stop_.store(true, std::memory_order_relaxed);
        return true;
    }
    return false;
}

void Interrupt::rethrow_if_signalled() {
    if (!error_) return;
    py::error_already_set e = std::move(*error_);
    error_.reset();
    throw e;
}

}  // namespace step35
