// Constrained decoding with llama.cpp's own machinery: the grammar sampler
// (llama_sampler_init_grammar / _lazy_patterns), libcommon's JSON Schema ->
// GBNF converter and grammar builder, and libcommon's reasoning-budget
// sampler. What grammar a call gets is decided in Python (step35.generation.constraints).
#include "constraint.h"

#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <map>
#include <utility>

#include "common.h"
#include "errors.h"
#include "json-schema-to-grammar.h"
#include "log.h"
#include "model.h"
#include "reasoning-budget.h"

namespace py = pybind11;

namespace step35 {

Constraint::Constraint(const std::shared_ptr<llama_model> & model, const std::string & grammar, bool lazy,
                       const std::vector<std::string> & trigger_patterns, int32_t reasoning_budget,
                       const std::vector<llama_token> & reasoning_start,
                       const std::vector<std::vector<llama_token>> & reasoning_end,
                       const std::vector<llama_token> & reasoning_forced,
                       const std::vector<llama_token> & reasoning_prefill)
    : model_(model), lazy_(lazy) {
    const llama_vocab * vocab = llama_model_get_vocab(model_.get());
    check_tokens(vocab, reasoning_start.data(), reasoning_start.size());
    check_tokens(vocab, reasoning_forced.data(), reasoning_forced.size());
    check_tokens(vocab, reasoning_prefill.data(), reasoning_prefill.size());
    for (const auto & seq : reasoning_end) check_tokens(vocab, seq.data(), seq.size());
    if (!grammar.empty()) {
        const auto mark = log_mark();
        if (lazy) {
            std::vector<const char *> patterns;
            for (const auto & p : trigger_patterns) patterns.push_back(p.c_str());
            grammar_ = llama_sampler_init_grammar_lazy_patterns(vocab, grammar.c_str(), "root", patterns.data(),
                                                                 patterns.size(), nullptr, 0);
        } else {
            grammar_ = llama_sampler_init_grammar(vocab, grammar.c_str(), "root");
        }
        if (grammar_ == nullptr) fail(ErrorKind::GrammarError, "the grammar does not parse", mark);
    }
    if (!reasoning_start.empty() && !reasoning_end.empty()) {
        if (reasoning_budget < -1) throw py::value_error("reasoning_budget must be >= -1");
        budget_ = common_reasoning_budget_init(vocab, {reasoning_start}, reasoning_end, reasoning_forced,
                                               reasoning_budget < 0 ? INT_MAX : reasoning_budget);
        for (llama_token t : reasoning_prefill) llama_sampler_accept(budget_, t);
    }
}

Constraint::~Constraint() {
    if (grammar_ != nullptr) llama_sampler_free(grammar_);
    if (budget_ != nullptr) llama_sampler_free(budget_);
}

llama_sampler * Constraint::clone_grammar() const { return grammar_ ? llama_sampler_clone(grammar_) : nullptr; }
llama_sampler * Constraint::clone_budget() const { return budget_ ? llama_sampler_clone(budget_) : nullptr; }

std::vector<llama_token> Constraint::allowed(const std::vector<llama_token> & prefix, bool one_by_one) const {
    if (grammar_ == nullptr) throw py::value_error("this constraint has no grammar");
    const llama_vocab * vocab = llama_model_get_vocab(model_.get());
    check_tokens(vocab, prefix.data(), prefix.size());
    std::unique_ptr<llama_sampler, decltype(&llama_sampler_free)> g(clone_grammar(), &llama_sampler_free);
    for (llama_token t : prefix) {
        try {
            llama_sampler_accept(g.get(), t);
        } catch (const std::exception & e) {
            throw Error(ErrorKind::GrammarError, std::string("the grammar rejected the prefix: ") + e.what());
        }
    }
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> out;
    if (one_by_one) {
        for (llama_token t = 0; t < n_vocab; ++t) {
            llama_token_data one = {t, 0.0f, 0.0f};
            llama_token_data_array arr = {&one, 1, -1, false};
            llama_sampler_apply(g.get(), &arr);
            if (one.logit != -INFINITY) out.push_back(t);
        }
    } else {
        std::vector<llama_token_data> all((size_t) n_vocab);
        for (llama_token t = 0; t < n_vocab; ++t) all[(size_t) t] = {t, 0.0f, 0.0f};
        llama_token_data_array arr = {all.data(), all.size(), -1, false};
        llama_sampler_apply(g.get(), &arr);
        for (const auto & d : all)
            if (d.logit != -INFINITY) out.push_back(d.id);
    }
    return out;
}

namespace {

// Strict: a pattern the converter cannot express is an error, not "any string"
// (llama.cpp/patches/0001-json-schema-strict-patterns.patch).
const common_grammar_options kStrict = [] {
    common_grammar_options o;
    o.strict = true;
    return o;
}();

// A grammar of rules made from JSON Schemas by llama.cpp's converter, then
// rules written by the caller, in one rule set (libcommon's build_grammar).
// A rule body refers to a schema's rule as {{name}}: the converter names it
// (a schema of a primitive type is its shared rule, e.g. "boolean"). Returns
// the grammar and the name each rule got (a clashing name gets a suffix).
std::pair<std::string, std::map<std::string, std::string>> grammar_from_parts(
    const std::vector<std::pair<std::string, std::string>> & schemas,
    const std::vector<std::pair<std::string, std::string>> & rules) {
    std::vector<common_chat_schema_document> docs;
    std::map<std::string, std::string> names;
    std::string grammar;
    try {
        for (const auto & [name, schema] : schemas)
            docs.push_back(common_chat_schema_from_json(common_json::parse(schema)));
        grammar = build_grammar([&](const common_grammar_builder & b) {
            std::map<std::string, std::string> schema_rule;
            for (size_t i = 0; i < schemas.size(); ++i)
                schema_rule["{{" + schemas[i].first + "}}"] = b.add_schema(schemas[i].first, *docs[i].root);
            for (auto [name, body] : rules) {
                for (const auto & [placeholder, rule] : schema_rule)
                    for (size_t at = body.find(placeholder); at != std::string::npos; at = body.find(placeholder, at))
                        body.replace(at, placeholder.size(), rule);
                names[name] = b.add_rule(name, body);
            }
        }, kStrict);
    } catch (const std::exception & e) {
        throw Error(ErrorKind::GrammarError, e.what());
    }
    return {grammar, names};
}

std::string schema_to_grammar(const std::string & schema_json) {
    return grammar_from_parts({{"root", schema_json}}, {}).first;
}

}  // namespace

void register_constraint(py::module_ & m) {
    py::class_<Constraint, std::shared_ptr<Constraint>>(
        m, "Constraint", "A grammar and/or reasoning budget, prepared once for any number of generations.")
        .def(py::init([](const ModelHandle & model, const std::string & grammar, bool lazy,
                         const std::vector<std::string> & trigger_patterns, int32_t reasoning_budget,
                         const std::vector<llama_token> & reasoning_start,
                         const std::vector<std::vector<llama_token>> & reasoning_end,
                         const std::vector<llama_token> & reasoning_forced,
                         const std::vector<llama_token> & reasoning_prefill) {
                 return std::make_shared<Constraint>(model.get(), grammar, lazy, trigger_patterns, reasoning_budget,
                                                     reasoning_start, reasoning_end, reasoning_forced,
                                                     reasoning_prefill);
             }),
             py::arg("model"), py::arg("grammar"), py::arg("lazy") = false,
             py::arg("trigger_patterns") = std::vector<std::string>{}, py::arg("reasoning_budget") = -1,
             py::arg("reasoning_start") = std::vector<llama_token>{},
             py::arg("reasoning_end") = std::vector<std::vector<llama_token>>{},
             py::arg("reasoning_forced") = std::vector<llama_token>{},
             py::arg("reasoning_prefill") = std::vector<llama_token>{})
        .def_property_readonly("lazy", &Constraint::lazy)
        .def("allowed", &Constraint::allowed, py::arg("prefix"), py::arg("one_by_one") = false,
             py::call_guard<py::gil_scoped_release>(),
             "The token ids the grammar allows after it has taken `prefix` (GrammarError if it rejects one), "
             "asked of llama.cpp's grammar sampler over the whole vocabulary at once, or a token at a time "
             "(`one_by_one`, as the sampler's one-token check asks); both give the same answer.");

    m.def("json_schema_to_grammar", &schema_to_grammar, py::arg("schema"),
          "GBNF for a JSON Schema (a JSON string), by llama.cpp's converter; GrammarError when it cannot.");
    m.def("build_grammar", &grammar_from_parts, py::arg("schemas"), py::arg("rules"),
          "One GBNF from (name, JSON Schema) pairs and (name, body) rules that refer to them as {{name}}; "
          "returns it and the name each rule got.");
    m.def("gbnf_literal", &gbnf_format_literal, py::arg("text"), "A GBNF string literal matching exactly `text`.");
}

}  // namespace step35
