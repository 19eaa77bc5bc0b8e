// Backend discovery primitives: score a backend library without registering
// it, load one, and list what is registered. Which files to try and in what
// order is policy, and lives in step35/_runtime/backends.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "errors.h"
#include "ggml-backend.h"
#include "log.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace py = pybind11;

namespace step35 {
namespace {

// dlopen `path`, call its ggml_backend_score() (0 = this machine cannot run
// it), dlclose. Returns (score, error): score -1 with the loader's reason when
// the library cannot be opened or has no score function.
py::tuple score_backend(const std::string & path) {
    int score = -1;
    std::string err;
    {
        py::gil_scoped_release nogil;
        using score_t = int (*)();
#ifdef _WIN32
        std::wstring wpath(path.begin(), path.end());
        HMODULE h = LoadLibraryW(wpath.c_str());
        if (!h) {
            err = "LoadLibrary failed (error " + std::to_string(GetLastError()) + ")";
        } else {
            auto fn = (score_t) GetProcAddress(h, "ggml_backend_score");
            if (fn) score = fn(); else err = "no ggml_backend_score symbol";
            FreeLibrary(h);
        }
#else
        void * h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char * e = dlerror();
            err = e ? e : "dlopen failed";
        } else {
            auto fn = (score_t) dlsym(h, "ggml_backend_score");
            if (fn) score = fn(); else err = "no ggml_backend_score symbol";
            dlclose(h);
        }
#endif
    }
    if (err.empty()) return py::make_tuple(score, py::none());
    return py::make_tuple(score, py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(err.data(), (Py_ssize_t) err.size(), "replace")));
}

std::string load_backend(const std::string & path) {
    auto mark = log_mark();
    ggml_backend_reg_t reg;
    {
        py::gil_scoped_release nogil;
        reg = ggml_backend_load(path.c_str());
    }
    if (!reg) fail(ErrorKind::BackendLoadError, "could not load backend " + path, mark);
    return ggml_backend_reg_name(reg);
}

const char * dev_type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default: return "other";
    }
}

py::dict device_info(ggml_backend_dev_t dev) {
    ggml_backend_dev_props props;
    {
        py::gil_scoped_release nogil;  // drivers can be slow to answer
        ggml_backend_dev_get_props(dev, &props);
    }
    py::dict d;
    d["name"] = props.name ? props.name : "";
    d["description"] = props.description ? props.description : "";
    d["type"] = dev_type_name(props.type);
    d["memory_free"] = props.memory_free;
    d["memory_total"] = props.memory_total;
    d["device_id"] = props.device_id ? py::object(py::str(props.device_id)) : py::object(py::none());
    d["backend"] = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
    return d;
}

py::list registries() {
    py::list out;
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        ggml_backend_reg_t reg = ggml_backend_reg_get(i);
        py::dict r;
        r["name"] = ggml_backend_reg_name(reg);
        py::dict features;
        auto get_features = (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
        if (get_features) {
            for (auto * f = get_features(reg); f && f->name; ++f)
                features[py::str(f->name)] = f->value ? f->value : "";
        }
        r["features"] = features;
        py::list devs;
        for (size_t j = 0; j < ggml_backend_reg_dev_count(reg); ++j)
            devs.append(device_info(ggml_backend_reg_dev_get(reg, j)));
        r["devices"] = devs;
        out.append(r);
    }
    return out;
}

}  // namespace

void register_backends(py::module_ & m) {
    m.def("score_backend", &score_backend, py::arg("path"),
          "Open a ggml backend library, return (score, error) from its ggml_backend_score, close it.");
    m.def("load_backend", &load_backend, py::arg("path"),
          "Load and register a ggml backend library; returns its registry name.");
    m.def("registries", &registries, "Registered backends with their features and devices.");
}

}  // namespace step35
