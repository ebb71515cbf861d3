#pragma once
// Typed task configurations: one plain struct with commented defaults per task, its fields
// declared once (key, member, one-line help), and everything else derived from that declaration:
// JSON conversion, presets, overrides from a JSON file and from `key=value` strings (the CLI's
// --set), type checks, the printed and saved resolved config. After nanoGPT's configurator.py,
// with types enforced instead of inferred.
//
//   struct SortConfig {
//     std::string task = "sort";   // synthetic task name
//     int64_t length = 64;         // sequence length L
//     double lr = 1e-3;            // Adam learning rate
//     std::vector<int64_t> seeds = {0, 1, 2};
//   };
//   const ConfigSchema<SortConfig>& sort_schema() {
//     static const auto schema = ConfigSchema<SortConfig>("sort")
//         .field("task", &SortConfig::task, "synthetic task name")
//         .field("length", &SortConfig::length, "sequence length L")
//         .field("lr", &SortConfig::lr, "Adam learning rate")
//         .field("seeds", &SortConfig::seeds, "one run per seed")
//         .preset("quick", {{"length", 8}, {"seeds", {0}}}, "CPU smoke test")
//         .check("length must be > 0", [](const SortConfig& c) { return c.length > 0; });
//     return schema;
//   }
//   SortConfig c = sort_schema().resolve({"quick", "my.json", {"lr=3e-4"}});
//
// Resolution order: struct defaults -> preset -> JSON file -> each `key=value` in order -> checks.
// Field types: int (`int` and `int64_t` members, range-checked), float (`double`), bool, string,
// int list (`std::vector<int64_t>`), string list (`std::vector<std::string>`). In `key=value`
// text, lists are comma-separated ("seeds=0,1,2"; optional surrounding brackets; empty text is
// the empty list), bools are true/false/1/0, strings are taken verbatim. In JSON, values must
// have the field's JSON type (an int field rejects 64.0 and "64"; a float field accepts 64).
// Unknown keys are rejected with the valid keys and the closest one; bad values with the key, the
// expected type and the given text. All errors are c10::Error with a one-line message starting
// "config <name>: <source>: ".
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvq/util/join_names.h"

namespace kvq {
namespace train {

enum class FieldType { Int, Float, Bool, String, IntList, StringList };

// "int", "float", "bool", "string", "int list", "string list": the names errors and help use.
std::string field_type_name(FieldType type);

// Levenshtein distance (insertions, deletions, substitutions), for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);

using util::join_names;  // kvq/util/join_names.h

// Where the overrides of a resolution come from, applied in this order after the defaults.
struct ConfigSources {
  std::string preset;              // a declared preset name; "" = none
  std::string file;                // a JSON file holding an object of overrides; "" = none
  std::vector<std::string> sets;   // "key=value" strings, applied in order
  // `file` is the config.json of a run directory, perhaps written by an earlier kvq: the
  // schema's upgrades (ConfigSchema::upgrade) edit it before it is applied.
  bool file_is_saved_run = false;
};

// The untyped half of a schema: field metadata, presets, and every operation on the JSON form
// of a config (a flat object holding every field). ConfigSchema<T> adds the struct <-> JSON
// mapping on top.
class ConfigSchemaBase {
 public:
  struct Field {
    std::string key;
    FieldType type;
    std::string help;
    int64_t min = std::numeric_limits<int64_t>::min();  // range of an int field's member type
    int64_t max = std::numeric_limits<int64_t>::max();
  };
  struct Preset {
    std::string name;
    std::string help;
    nlohmann::json values;  // object of overrides, checked when declared
  };

  const std::string& name() const { return name_; }
  const std::vector<Field>& fields() const { return fields_; }
  const std::vector<Preset>& presets() const { return presets_; }
  std::vector<std::string> keys() const;
  std::vector<std::string> preset_names() const;
  bool has_key(const std::string& key) const;

  // The field named `key`, or an error naming `source`, the key, the closest valid key (edit
  // distance <= max(2, |key| / 3)) and the list of valid keys.
  const Field& field_info(const std::string& key, const std::string& source) const;

  // `value` checked against the field's type and range, normalised (an integer given for a float
  // field becomes a float). Errors name `source`, the key, the expected type and value.dump().
  nlohmann::json check_value(const Field& field, const nlohmann::json& value,
                             const std::string& source) const;

  // The text of `key=value` converted to the field's type (rules in the header comment). Errors
  // name `source`, the key, the expected type and the given text.
  nlohmann::json parse_value(const Field& field, const std::string& text,
                             const std::string& source) const;

  // Overrides `values[key]` for every key of the object `patch`, each checked; `source` names
  // the patch in errors ("file a.json", "preset 'quick'").
  void apply_json(nlohmann::json& values, const nlohmann::json& patch,
                  const std::string& source) const;
  // One `key=value` override (the text after the first '=' is the value; a leading "--" on the
  // key is dropped, so "--lr=1e-3" also works).
  void apply_assignment(nlohmann::json& values, const std::string& assignment) const;
  // A declared preset; an unknown name fails with the list of presets.
  void apply_preset(nlohmann::json& values, const std::string& preset) const;
  // A JSON file holding one object; errors name the file (missing, unparsable, not an object,
  // unknown key, bad type). `file_is_saved_run`: the file is a run's config.json (upgrade_saved runs
  // on it first).
  void apply_file(nlohmann::json& values, const std::string& path,
                  bool file_is_saved_run = false) const;
  // Runs the declared upgrades (ConfigSchema::upgrade), in order, on `saved`, a config object a
  // run directory saved.
  void upgrade_saved(nlohmann::json& saved) const;
  // preset, then file, then sets, as given in `sources`.
  void apply_sources(nlohmann::json& values, const ConfigSources& sources) const;

  // The resolved config for a terminal, one field a line in declaration order:
  //   "  length = 64   # sequence length L"
  std::string format(const nlohmann::json& values) const;
  // Usage text for the CLI: one line per field with its type, default and help.
  std::string format_help(const nlohmann::json& defaults) const;
  // Pretty JSON text with the keys in declaration order (what save() writes).
  std::string dump(const nlohmann::json& values) const;
  // "key: old -> new" for each field whose value differs between two resolved configs.
  std::vector<std::string> diff(const nlohmann::json& before, const nlohmann::json& after) const;

 protected:
  explicit ConfigSchemaBase(std::string name);
  void add_field(Field field);
  void add_preset(Preset preset);
  void add_upgrade(std::function<void(nlohmann::json&)> upgrade);
  [[noreturn]] void fail(const std::string& source, const std::string& message) const;

 private:
  std::string name_;
  std::vector<Field> fields_;
  std::vector<Preset> presets_;
  std::vector<std::function<void(nlohmann::json&)>> upgrades_;
};

namespace detail {
template <class M>
struct ConfigFieldType;
template <>
struct ConfigFieldType<int> {
  static constexpr FieldType value = FieldType::Int;
};
template <>
struct ConfigFieldType<int64_t> {
  static constexpr FieldType value = FieldType::Int;
};
template <>
struct ConfigFieldType<double> {
  static constexpr FieldType value = FieldType::Float;
};
template <>
struct ConfigFieldType<bool> {
  static constexpr FieldType value = FieldType::Bool;
};
template <>
struct ConfigFieldType<std::string> {
  static constexpr FieldType value = FieldType::String;
};
template <>
struct ConfigFieldType<std::vector<int64_t>> {
  static constexpr FieldType value = FieldType::IntList;
};
template <>
struct ConfigFieldType<std::vector<std::string>> {
  static constexpr FieldType value = FieldType::StringList;
};
}  // namespace detail

// The schema of one config struct T (default-constructible; its defaults are the member
// initialisers). Declare it once, in a function-local static, with chained calls: every field(),
// then preset() and check(). Declaration mistakes (duplicate or malformed key, a preset with an
// unknown key or a bad value) throw when the schema is built.
template <class T>
class ConfigSchema : public ConfigSchemaBase {
 public:
  explicit ConfigSchema(std::string name) : ConfigSchemaBase(std::move(name)) {}

  // Declares member `member` under `key` ([a-z][a-z0-9_]*), with a one-line `help`.
  template <class M>
  ConfigSchema& field(const std::string& key, M T::*member, const std::string& help) {
    Field info{key, detail::ConfigFieldType<M>::value, help};
    if constexpr (std::is_same_v<M, int>) {
      info.min = std::numeric_limits<int>::min();
      info.max = std::numeric_limits<int>::max();
    }
    add_field(std::move(info));
    get_.push_back([member](const T& c) { return nlohmann::json(c.*member); });
    set_.push_back([member](T& c, const nlohmann::json& v) { c.*member = v.get<M>(); });
    return *this;
  }

  // Declares member function `access` of the struct member `sub` under `key`: a field of an
  // options struct held by the config (for TORCH_ARG options, `access` is the name's mutable
  // getter, e.g. &nn::AttentionOptions::chunk_size).
  template <class S, class M>
  ConfigSchema& field(const std::string& key, S T::*sub, M& (S::*access)() noexcept,
                      const std::string& help) {
    add_field(Field{key, detail::ConfigFieldType<M>::value, help});
    get_.push_back([sub, access](const T& c) {
      S copy = c.*sub;
      return nlohmann::json((copy.*access)());
    });
    set_.push_back([sub, access](T& c, const nlohmann::json& v) { ((c.*sub).*access)() = v.get<M>(); });
    return *this;
  }

  // Declares a field that `get` reads from a config and `set` writes into it: a value nested
  // deeper than one options struct, or held in another form than its key's (an optional whose
  // key spells unset as -1).
  template <class M>
  ConfigSchema& accessor_field(const std::string& key, std::function<M(const T&)> get,
                               std::function<void(T&, const M&)> set, const std::string& help) {
    add_field(Field{key, detail::ConfigFieldType<M>::value, help});
    get_.push_back([get](const T& c) { return nlohmann::json(get(c)); });
    set_.push_back([set](T& c, const nlohmann::json& v) { set(c, v.get<M>()); });
    return *this;
  }

  // Declares a named preset: an object of overrides applied after the defaults.
  ConfigSchema& preset(const std::string& name, nlohmann::json values,
                       const std::string& help = "") {
    add_preset(Preset{name, help, std::move(values)});
    return *this;
  }

  // Declares how a config that a run saved with an earlier kvq reads today: `upgrade` edits the
  // saved JSON object before it is applied over today's defaults, e.g. gives a key added since
  // the value that kept the old behaviour (a key absent from a saved config otherwise takes
  // today's default). Runs only on run directories' configs (RunDir::config_path), never on
  // presets, --config files or --set.
  ConfigSchema& upgrade(std::function<void(nlohmann::json&)> upgrade) {
    add_upgrade(std::move(upgrade));
    return *this;
  }

  // Declares a cross-field check run on every resolved config; fails with
  // "config <name>: <message>" when `ok` returns false.
  ConfigSchema& check(const std::string& message, std::function<bool(const T&)> ok) {
    checks_.emplace_back(message, std::move(ok));
    return *this;
  }

  // Every field of `config` (a flat object).
  nlohmann::json to_json(const T& config) const {
    nlohmann::json values = nlohmann::json::object();
    for (size_t i = 0; i < get_.size(); ++i) values[fields()[i].key] = get_[i](config);
    return values;
  }

  // Defaults overridden by the (possibly partial) object `patch`, checked; `source` names the
  // JSON in errors.
  T from_json(const nlohmann::json& patch, const std::string& source = "json") const {
    nlohmann::json values = to_json(T{});
    apply_json(values, patch, source);
    return build(values);
  }

  // Defaults -> preset -> file -> sets -> checks (see ConfigSources).
  T resolve(const ConfigSources& sources) const {
    nlohmann::json values = to_json(T{});
    apply_sources(values, sources);
    return build(values);
  }

  // `config` with one more override applied, checked.
  T with(const T& config, const std::string& assignment) const {
    nlohmann::json values = to_json(config);
    apply_assignment(values, assignment);
    return build(values);
  }

  // The resolved config for a terminal (see ConfigSchemaBase::format).
  std::string format(const T& config) const { return ConfigSchemaBase::format(to_json(config)); }
  // Usage text with the struct's defaults.
  std::string format_help() const { return ConfigSchemaBase::format_help(to_json(T{})); }

  // Writes `config` as pretty JSON (declaration order) to `path`, atomically. The file reads
  // back through ConfigSources::file or from_json to the same config.
  void save(const T& config, const std::string& path) const;

  // Declares a check that throws a c10::Error with its own message when `config` is invalid;
  // the schema fails with "config <name>: check: <that message>".
  ConfigSchema& check(std::function<void(const T&)> validate) {
    validators_.push_back(std::move(validate));
    return *this;
  }

  // Runs the declared checks on `config`.
  void validate(const T& config) const {
    for (const auto& [message, ok] : checks_) {
      if (!ok(config)) fail("check", message);
    }
    for (const auto& check : validators_) {
      try {
        check(config);
      } catch (const c10::Error& e) {
        fail("check", e.what_without_backtrace());
      }
    }
  }

 private:
  T build(const nlohmann::json& values) const {
    T config{};
    for (size_t i = 0; i < set_.size(); ++i) set_[i](config, values.at(fields()[i].key));
    validate(config);
    return config;
  }

  std::vector<std::function<nlohmann::json(const T&)>> get_;
  std::vector<std::function<void(T&, const nlohmann::json&)>> set_;
  std::vector<std::pair<std::string, std::function<bool(const T&)>>> checks_;
  std::vector<std::function<void(const T&)>> validators_;
};

// Writes `text` to `path` atomically (declared here for ConfigSchema<T>::save).
void save_config_text(const std::string& path, const std::string& text);

template <class T>
void ConfigSchema<T>::save(const T& config, const std::string& path) const {
  save_config_text(path, dump(to_json(config)));
}

}  // namespace train
}  // namespace kvq
