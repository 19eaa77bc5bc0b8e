#include "log.h"

#include <cstdio>
#include <deque>
#include <mutex>

#include "ggml.h"
#include "llama.h"

namespace py = pybind11;

namespace step35 {
namespace {

constexpr size_t kMaxLines = 2000;

struct Ring {
    std::mutex mu;
    std::deque<LogLine> lines;
    std::string partial;  // ggml may log one line in several calls (GGML_LOG_LEVEL_CONT)
    int partial_level = GGML_LOG_LEVEL_INFO;
    unsigned long long next_seq = 0;
    int echo_level = GGML_LOG_LEVEL_NONE + 100;  // echo nothing by default
};

Ring & ring() {
    static Ring * r = new Ring();  // never destroyed: logging may happen during exit
    return *r;
}

void on_log(ggml_log_level level, const char * text, void *) {
    if (text == nullptr) return;
    Ring & r = ring();
    std::lock_guard<std::mutex> lock(r.mu);
    if (level != GGML_LOG_LEVEL_CONT) r.partial_level = level;
    r.partial += text;
    size_t nl;
    while ((nl = r.partial.find('\n')) != std::string::npos) {
        LogLine line{r.next_seq++, r.partial_level, r.partial.substr(0, nl)};
        r.partial.erase(0, nl + 1);
        if (line.level >= r.echo_level) std::fprintf(stderr, "%s\n", line.text.c_str());
        r.lines.push_back(std::move(line));
        if (r.lines.size() > kMaxLines) r.lines.pop_front();
    }
}

}  // namespace

void install_log_capture() { llama_log_set(on_log, nullptr); }

unsigned long long log_mark() {
    Ring & r = ring();
    std::lock_guard<std::mutex> lock(r.mu);
    return r.next_seq;
}

std::vector<LogLine> log_since(unsigned long long mark, int min_level) {
    Ring & r = ring();
    std::lock_guard<std::mutex> lock(r.mu);
    std::vector<LogLine> out;
    for (const auto & l : r.lines)
        if (l.seq >= mark && l.level >= min_level) out.push_back(l);
    return out;
}

void register_log(py::module_ & m) {
    install_log_capture();
    m.def(
        "set_log_echo_level",
        [](int level) {
            Ring & r = ring();
            std::lock_guard<std::mutex> lock(r.mu);
            r.echo_level = level;
        },
        py::arg("level"), "Echo captured lines at or above this ggml log level to stderr.");
    m.attr("LOG_DEBUG") = static_cast<int>(GGML_LOG_LEVEL_DEBUG);
    m.attr("LOG_INFO") = static_cast<int>(GGML_LOG_LEVEL_INFO);
    m.attr("LOG_WARN") = static_cast<int>(GGML_LOG_LEVEL_WARN);
    m.attr("LOG_ERROR") = static_cast<int>(GGML_LOG_LEVEL_ERROR);
}

}  // namespace step35
