// Capture of llama.cpp / ggml log output.
//
// Every line goes into a bounded in-memory ring (thread-safe, no GIL needed,
// so it is safe from ggml worker threads). Python reads it for `step35 info`
// and error messages; lines at or above the echo level are also written to
// stderr (STEP35_LOG_LEVEL / step35.set_log_level).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace step35 {

struct LogLine {
    unsigned long long seq;
    int level;  // ggml_log_level
    std::string text;
};

void install_log_capture();
unsigned long long log_mark();  // sequence number of the next line
std::vector<LogLine> log_since(unsigned long long mark, int min_level);

void register_log(pybind11::module_ & m);

}  // namespace step35
