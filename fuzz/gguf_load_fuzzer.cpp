// libFuzzer harness over the native load path of a GGUF file: ggml's gguf
// parser, then (when it accepts the file) llama.cpp's model loader with
// no_alloc (metadata, vocabulary, hyperparameters, every tensor placed, no
// weights read), on the CPU. Built with ASan + UBSan by fuzz/build.sh; run by
// fuzz/run.sh. The input is written to an in-memory file (memfd) because both
// parsers take a path.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

namespace {

void quiet(enum ggml_log_level, const char *, void *) {}

struct Init {
    Init() {
        llama_log_set(quiet, nullptr);
        ggml_log_set(quiet, nullptr);
        llama_backend_init();
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static Init init;
    const int fd = memfd_create("gguf", 0);
    if (fd < 0) return 0;
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) break;
        done += (size_t) n;
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);

    ggml_context * meta = nullptr;
    gguf_init_params gp = {/*no_alloc =*/ true, /*ctx =*/ &meta};
    gguf_context * g = gguf_init_from_file(path.c_str(), gp);
    const bool parsed = g != nullptr;
    if (g) {
        // walk what a loader reads: every key (by type) and every tensor
        for (int64_t i = 0; i < gguf_get_n_kv(g); ++i) {
            const gguf_type t = gguf_get_kv_type(g, i);
            if (t == GGUF_TYPE_STRING) (void) gguf_get_val_str(g, i);
            if (t == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, i) == GGUF_TYPE_STRING && gguf_get_arr_n(g, i) > 0)
                (void) gguf_get_arr_str(g, i, gguf_get_arr_n(g, i) - 1);
        }
        for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) (void) gguf_get_tensor_offset(g, i);
        gguf_free(g);
    }
    if (meta) ggml_free(meta);

    if (parsed) {
        llama_model_params mp = llama_model_default_params();
        mp.no_alloc = true;
        mp.load_mode = LLAMA_LOAD_MODE_NONE;
        mp.n_gpu_layers = 0;
        llama_model * model = llama_model_load_from_file(path.c_str(), mp);
        if (model) llama_model_free(model);
    }
    close(fd);
    return 0;
}
