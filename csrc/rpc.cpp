// Remote devices through llama.cpp's RPC backend (ggml-rpc, a module in
// step35/lib): add a worker's devices, run a worker, and turn a worker that
// failed into RPCError (see rpc.h). Which devices to serve and the security
// policy (where to bind) live in Python (step35/tools/rpc.py).
#include "rpc.h"

#include <pybind11/stl.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

#include "errors.h"
#include "ggml-backend.h"

namespace py = pybind11;

namespace step35 {
namespace {

// The entry points of ggml-rpc (upstream's, and the two our patch adds).
using add_server_t = ggml_backend_reg_t (*)(const char * endpoint);
using get_failures_t = uint64_t (*)(const char * endpoint, char * msg, size_t msg_size);
using start_server_mem_t = void (*)(const char * endpoint, const char * cache_dir, size_t n_threads,
                                    size_t n_devices, ggml_backend_dev_t * devices, const size_t * mem);

template <typename F>
F rpc_proc(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    if (!reg)
        throw Error(ErrorKind::BackendLoadError,
                    "the RPC backend (libggml-rpc in step35/lib) is not loaded; `step35 info` says why");
    auto fn = (F) ggml_backend_reg_get_proc_address(reg, name);
    if (!fn)
        throw Error(ErrorKind::BackendLoadError,
                    std::string("the loaded RPC backend has no ") + name + " (it is not the one step35 was built with)");
    return fn;
}

unsigned long long failures(const std::string & endpoint, std::string * msg) {
    static const get_failures_t fn = rpc_proc<get_failures_t>("ggml_backend_rpc_get_failures");
    char buf[512] = {0};
    const unsigned long long n = fn(endpoint.c_str(), buf, sizeof(buf));
    if (msg) *msg = buf;
    return n;
}

std::mutex g_mu;
std::unordered_map<const llama_model *, RpcWatch> g_models;  // models that use workers
std::atomic<int> g_n_models{0};
std::set<std::string> g_registered;  // endpoints whose devices are registered with ggml

// Add the worker at `endpoint` (host:port): its devices join ggml's device
// list (once per process). Returns their names (RPC0, RPC1, ...). A worker met
// before is asked again, so one that has gone away is an error here.
std::vector<std::string> rpc_connect(const std::string & endpoint) {
    const auto add = rpc_proc<add_server_t>("ggml_backend_rpc_add_server");
    const unsigned long long before = failures(endpoint, nullptr);
    ggml_backend_reg_t reg;
    {
        py::gil_scoped_release nogil;
        reg = add(endpoint.c_str());
        if (reg) {
            for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) {
                size_t free = 0, total = 0;
                ggml_backend_dev_memory(ggml_backend_reg_dev_get(reg, i), &free, &total);
            }
        }
    }
    std::string msg;
    if (failures(endpoint, &msg) > before || !reg)
        throw Error(ErrorKind::RPCError, "RPC worker " + endpoint + ": " +
                                             (msg.empty() ? std::string("it has no devices") : msg));
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (g_registered.insert(endpoint).second) ggml_backend_register(reg);
    }
    std::vector<std::string> names;
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i)
        names.emplace_back(ggml_backend_dev_name(ggml_backend_reg_dev_get(reg, i)));
    return names;
}

// Serve `devices` (ggml names) at `endpoint` until the process ends. Returns
// (as RPCError) only when the server cannot start, e.g. the port is taken.
void rpc_serve(const std::string & endpoint, std::optional<std::string> cache_dir, size_t n_threads,
               const std::vector<std::string> & devices, const std::vector<size_t> & mem) {
    const auto start = rpc_proc<start_server_mem_t>("ggml_backend_rpc_start_server_mem");
    if (devices.empty()) throw py::value_error("rpc_serve needs at least one device");
    if (!mem.empty() && mem.size() != devices.size())
        throw py::value_error("rpc_serve: mem needs one value per device (0 = the device's own memory)");
    std::vector<ggml_backend_dev_t> devs;
    for (const auto & name : devices) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (!dev) throw py::value_error("no device named '" + name + "'");
        devs.push_back(dev);
    }
    {
        py::gil_scoped_release nogil;
        start(endpoint.c_str(), cache_dir ? cache_dir->c_str() : nullptr, n_threads, devs.size(), devs.data(),
              mem.empty() ? nullptr : mem.data());
    }
    throw Error(ErrorKind::RPCError, "the RPC server for " + endpoint +
                                         " stopped: it could not start or listen there (the reason is printed above)");
}

}  // namespace

RpcWatch rpc_watch_begin(const std::vector<std::string> & endpoints) {
    RpcWatch w;
    for (const auto & e : endpoints) {
        w.endpoints.push_back(e);
        w.failures.push_back(failures(e, nullptr));
    }
    return w;
}

void rpc_watch_check(const RpcWatch & w) {
    for (size_t i = 0; i < w.endpoints.size(); ++i) {
        std::string msg;
        if (failures(w.endpoints[i], &msg) > w.failures[i])
            throw Error(ErrorKind::RPCError,
                        "RPC worker " + w.endpoints[i] + ": " + msg +
                            ". The part of the model it held is gone: close this Model and load it again "
                            "once the worker runs (`step35 rpc-server`).");
    }
}

void rpc_watch_model(const llama_model * model, RpcWatch w) {
    if (w.endpoints.empty()) return;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_models.emplace(model, std::move(w)).second) g_n_models.fetch_add(1);
}

void rpc_forget_model(const llama_model * model) {
    if (g_n_models.load() == 0) return;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_models.erase(model) > 0) g_n_models.fetch_sub(1);
}

void rpc_check(llama_context * ctx, const llama_model * model) {
    if (g_n_models.load(std::memory_order_relaxed) == 0) return;
    RpcWatch w;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        auto it = g_models.find(model);
        if (it == g_models.end()) return;
        w = it->second;
    }
    llama_synchronize(ctx);  // replies of this decode are in (or the failure is recorded)
    rpc_watch_check(w);
}

void register_rpc(py::module_ & m) {
    m.def("rpc_connect", &rpc_connect, py::arg("endpoint"),
          "Add the devices of the RPC worker at host:port (once per process); returns their names. "
          "RPCError if it cannot be reached, speaks another protocol version, or has no devices.");
    m.def("rpc_serve", &rpc_serve, py::arg("endpoint"), py::arg("cache_dir"), py::arg("n_threads"),
          py::arg("devices"), py::arg("mem"),
          "Run ggml's RPC server for the named devices at host:port; blocks (GIL released) until the "
          "process ends. mem: per device, the most memory to report (0 = all). RPCError if it cannot start.");
}

}  // namespace step35
