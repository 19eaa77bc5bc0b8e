// Model loading, properties, metadata and tokenization (thin: arguments ->
// llama.cpp -> result). Path resolution, split-set checks and GGUF validation
// happen in Python before we get here (step35/model.py).
#include "model.h"

#include <pybind11/stl.h>

#include <optional>

#include <string>
#include <vector>

#include "errors.h"
#include "ggml-backend.h"
#include "log.h"
#include "memory.h"
#include "rpc.h"

namespace py = pybind11;

namespace step35 {

std::shared_ptr<llama_model> ModelHandle::get() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!model_) throw Error(ErrorKind::ClosedError, "this Model has been closed");
    return model_;
}

std::shared_ptr<llama_model> ModelHandle::heads() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!model_) throw Error(ErrorKind::ClosedError, "this Model has been closed");
    return heads_;
}

void ModelHandle::set_heads(const ModelHandle & sidecar) {
    std::shared_ptr<llama_model> h = sidecar.get();
    std::lock_guard<std::mutex> lock(mu_);
    if (!model_) throw Error(ErrorKind::ClosedError, "this Model has been closed");
    // llama-common's MTP driver asserts these; check them here as errors
    if (llama_model_n_layer_nextn(h.get()) <= 0)
        throw Error(ErrorKind::InvalidModelError, "the MTP file holds no MTP heads (nextn_predict_layers is 0)");
    if (llama_model_n_embd_out(h.get()) != llama_model_n_embd_out(model_.get()))
        throw Error(ErrorKind::InvalidModelError,
                    "the MTP file's hidden size (" + std::to_string(llama_model_n_embd_out(h.get())) +
                        ") differs from the model's (" + std::to_string(llama_model_n_embd_out(model_.get())) +
                        "): it belongs to another model");
    if (llama_vocab_n_tokens(llama_model_get_vocab(h.get())) !=
        llama_vocab_n_tokens(llama_model_get_vocab(model_.get())))
        throw Error(ErrorKind::InvalidModelError, "the MTP file's vocabulary size differs from the model's: it "
                                                  "belongs to another model");
    heads_ = std::move(h);
}

void ModelHandle::close() {
    std::shared_ptr<llama_model> dropped, dropped_heads;
    {
        std::lock_guard<std::mutex> lock(mu_);
        dropped.swap(model_);
        dropped_heads.swap(heads_);
    }
    if (dropped || dropped_heads) {
        py::gil_scoped_release nogil;  // freeing big weights takes a while
        dropped_heads.reset();
        dropped.reset();
    }
}

bool ModelHandle::closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !model_;
}

namespace {

// Progress callback state: calls the Python callable (if any) with the GIL
// held, and turns Ctrl-C / a raised exception / a False return into abort.
struct Progress {
    py::object callback;
    py::error_already_set * error = nullptr;
    bool user_cancelled = false;

    static bool call(float p, void * ud) {
        auto * self = static_cast<Progress *>(ud);
        py::gil_scoped_acquire gil;
        try {
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (!self->callback.is_none()) {
                py::object r = self->callback(p);
                if (!r.is_none() && !r.cast<bool>()) {
                    self->user_cancelled = true;
                    return false;
                }
            }
        } catch (py::error_already_set & e) {
            self->error = new py::error_already_set(std::move(e));
            return false;
        }
        return true;
    }
};

std::unique_ptr<ModelHandle> load_model(const std::string & path, int n_gpu_layers, bool use_mmap, bool use_mlock,
                       bool vocab_only, bool check_tensors, int main_gpu, py::object progress, bool no_alloc,
                       std::optional<std::vector<std::string>> devices, std::vector<float> tensor_split,
                       std::vector<std::string> rpc, bool load_mtp) {
    llama_model_params params = llama_model_default_params();
    params.load_mtp = load_mtp;
    params.n_gpu_layers = n_gpu_layers;
    params.main_gpu = main_gpu;
    // Devices to use, by ggml name (CUDA0, Vulkan1, ...): a NULL-terminated
    // list that outlives the load. Empty = CPU only. Unknown names are
    // rejected in Python (step35/model.py) with the list of devices.
    std::vector<ggml_backend_dev_t> devs;
    if (devices) {
        for (const auto & name : *devices) {
            ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
            if (!dev) throw py::value_error("no device named '" + name + "'");
            devs.push_back(dev);
        }
        devs.push_back(nullptr);
        params.devices = devs.data();
    }
    // Fractions of the offloaded layers per device (in `devices` order); checked in Python.
    std::vector<float> split(llama_max_devices(), 0.0f);
    if (!tensor_split.empty()) {
        if (tensor_split.size() > split.size())
            throw py::value_error("tensor_split has " + std::to_string(tensor_split.size()) +
                                  " values; llama.cpp takes at most " + std::to_string(split.size()));
        std::copy(tensor_split.begin(), tensor_split.end(), split.begin());
        params.tensor_split = split.data();
    }
    params.vocab_only = vocab_only;
    params.check_tensors = check_tensors;
    if (use_mmap) params.load_mode = use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP;
    else params.load_mode = use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE;
    if (no_alloc) {
        // Memory planning (step35/tools/fit.py): read the header, place every tensor
        // and record buffer sizes, but allocate and read nothing.
        params.no_alloc = true;
        params.load_mode = LLAMA_LOAD_MODE_NONE;
    }
    Progress state{std::move(progress)};
    params.progress_callback = &Progress::call;
    params.progress_callback_user_data = &state;

    auto mark = log_mark();
    const RpcWatch watch = rpc_watch_begin(rpc);  // workers whose devices are in `devices`
    llama_model * raw;
    {
        py::gil_scoped_release nogil;
        raw = llama_model_load_from_file(path.c_str(), params);
    }
    if (state.error) {
        if (raw) llama_model_free(raw);
        py::error_already_set e = std::move(*state.error);
        delete state.error;
        throw e;
    }
    std::shared_ptr<llama_model> model(raw, [](llama_model * m) {
        if (!m) return;
        rpc_forget_model(m);
        llama_model_free(m);
        return_free_memory();
    });
    rpc_watch_check(watch);  // a worker that failed while loading: RPCError (the model is freed)
    if (!raw) {
        if (state.user_cancelled)
            throw Error(ErrorKind::Cancelled, "loading " + path + " was cancelled by the progress callback");
        fail(ErrorKind::ModelLoadError, "llama.cpp could not load " + path, mark);
    }
    rpc_watch_model(raw, watch);
    auto handle = std::make_unique<ModelHandle>(model);
    // its own MTP heads (a file with the trunk and the heads, loaded with load_mtp)
    if (load_mtp && llama_model_n_layer_nextn(raw) > 0) handle->set_heads(*handle);
    return handle;
}

py::object utf8(const std::string & s) {
    return py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace"));
}

std::vector<llama_token> tokenize(const ModelHandle & h, const std::string & text, bool add_special,
                                  bool parse_special) {
    auto model = h.get();
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    if (text.size() > (size_t) INT32_MAX) throw py::value_error("text is too long to tokenize (over 2 GiB)");
    auto mark = log_mark();
    std::vector<llama_token> out;
    {
        py::gil_scoped_release nogil;
        out.resize(text.size() + 2);
        int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(),
                                   add_special, parse_special);
        if (n < 0 && n != INT32_MIN) {
            out.resize((size_t) -n);
            n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(),
                               add_special, parse_special);
        }
        if (n < 0) {
            py::gil_scoped_acquire gil;
            fail(ErrorKind::TokenizeError, "tokenization failed", mark);
        }
        out.resize((size_t) n);
    }
    return out;
}


py::bytes detokenize(const ModelHandle & h, const std::vector<llama_token> & tokens, bool remove_special,
                     bool unparse_special) {
    auto model = h.get();
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    check_tokens(vocab, tokens.data(), tokens.size());
    std::string out;
    {
        py::gil_scoped_release nogil;
        out.resize(tokens.size() * 8 + 16);
        int32_t n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), out.data(), (int32_t) out.size(),
                                     remove_special, unparse_special);
        if (n < 0) {
            out.resize((size_t) -n);
            n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), out.data(), (int32_t) out.size(),
                                 remove_special, unparse_special);
        }
        out.resize(n < 0 ? 0 : (size_t) n);
    }
    return py::bytes(out);
}

py::bytes token_to_piece(const ModelHandle & h, llama_token token, bool special) {
    auto model = h.get();
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    check_tokens(vocab, &token, 1);
    char buf[256];
    int32_t n = llama_token_to_piece(vocab, token, buf, sizeof(buf), 0, special);
    if (n < 0) {
        std::string big((size_t) -n, '\0');
        n = llama_token_to_piece(vocab, token, big.data(), (int32_t) big.size(), 0, special);
        return py::bytes(big.data(), n < 0 ? 0 : (size_t) n);
    }
    return py::bytes(buf, (size_t) n);
}

}  // namespace

void check_tokens(const llama_vocab * vocab, const llama_token * tokens, size_t n) {
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (size_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            throw py::value_error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(n_vocab) + ")");
    }
}

void register_model(py::module_ & m) {
    py::class_<ModelHandle>(m, "ModelHandle", "A loaded llama.cpp model (use step35.Model).")
        .def("close", &ModelHandle::close, "Drop this handle's reference to the weights.")
        .def_property_readonly("closed", &ModelHandle::closed)
        .def_property_readonly("n_params", [](const ModelHandle & h) { return llama_model_n_params(h.get().get()); })
        .def_property_readonly("size", [](const ModelHandle & h) { return llama_model_size(h.get().get()); })
        .def_property_readonly("n_layer", [](const ModelHandle & h) { return llama_model_n_layer(h.get().get()); })
        .def_property_readonly("n_heads", [](const ModelHandle & h) {
                auto heads = h.heads();
                return heads ? llama_model_n_layer_nextn(heads.get()) : 0;
            }, "MTP heads loaded for drafting (its own or a sidecar's; 0: none).")
        .def("set_heads", &ModelHandle::set_heads, py::arg("sidecar"),
             "Draft with the MTP heads of `sidecar` (a model loaded from an MTP-only file).")
        .def_property_readonly("n_ctx_train",
                               [](const ModelHandle & h) { return llama_model_n_ctx_train(h.get().get()); })
        .def_property_readonly("n_embd", [](const ModelHandle & h) { return llama_model_n_embd(h.get().get()); })
        .def_property_readonly("n_vocab", [](const ModelHandle & h) {
            return llama_vocab_n_tokens(llama_model_get_vocab(h.get().get()));
        })
        .def_property_readonly("description", [](const ModelHandle & h) {
            char buf[256];
            int32_t n = llama_model_desc(h.get().get(), buf, sizeof(buf));
            return utf8(std::string(buf, n < 0 ? 0 : std::min((size_t) n, sizeof(buf) - 1)));
        })
        .def("chat_template", [](const ModelHandle & h, const char * name) -> py::object {
                const char * t = llama_model_chat_template(h.get().get(), name);
                if (!t) return py::none();
                return utf8(t);
            }, py::arg("name") = nullptr, "The GGUF's chat template (or a named one), None if absent.")
        .def("special_tokens", [](const ModelHandle & h) {
                const llama_vocab * v = llama_model_get_vocab(h.get().get());
                py::dict d;
                d["bos"] = llama_vocab_bos(v);
                d["eos"] = llama_vocab_eos(v);
                d["eot"] = llama_vocab_eot(v);
                d["add_bos"] = llama_vocab_get_add_bos(v);
                return d;
            })
        .def("tokenize", &tokenize, py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
        .def("detokenize", &detokenize, py::arg("tokens"), py::arg("remove_special") = false,
             py::arg("unparse_special") = false)
        .def("token_to_piece", &token_to_piece, py::arg("token"), py::arg("special") = false);

    m.def("load_model", &load_model, py::arg("path"), py::arg("n_gpu_layers") = -1, py::arg("use_mmap") = true,
          py::arg("use_mlock") = false, py::arg("vocab_only") = false, py::arg("check_tensors") = false,
          py::arg("main_gpu") = 0, py::arg("progress") = py::none(), py::arg("no_alloc") = false,
          py::arg("devices") = py::none(), py::arg("tensor_split") = std::vector<float>{},
          py::arg("rpc") = std::vector<std::string>{}, py::arg("load_mtp") = false,
          "Load a GGUF (the first file of a split set loads them all). GIL released while loading.\n"
          "devices: ggml device names to use (None: every GPU; []: CPU only).\n"
          "tensor_split: the share of offloaded layers per device, in `devices` order (empty: by free memory).\n"
          "rpc: the host:port of every RPC worker among `devices` (a worker that fails raises RPCError).\n"
          "no_alloc=True only plans the buffers (for memory estimates; such a model cannot run).\n"
          "load_mtp: also load the MTP (NextN) heads the file holds.");
}

}  // namespace step35
