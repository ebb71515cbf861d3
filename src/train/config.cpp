#include "kvq/train/config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "kvq/util/atomic_file.h"

namespace kvq {
namespace train {

namespace {

std::string trim(const std::string& text) {
  const auto is_space = [](unsigned char c) { return std::isspace(c) != 0; };
  auto begin = std::find_if_not(text.begin(), text.end(), is_space);
  auto end = std::find_if_not(text.rbegin(), text.rend(), is_space).base();
  return begin < end ? std::string(begin, end) : std::string();
}

std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool valid_key(const std::string& key) {
  if (key.empty() || !std::islower(static_cast<unsigned char>(key[0]))) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) ||
           c == '_';
  });
}

// Whole-string base-10 integer ("+5", "-3"; no spaces inside, no decimals, no exponent).
bool parse_int(const std::string& text, int64_t& out) {
  if (text.empty()) return false;
  size_t i = (text[0] == '+' || text[0] == '-') ? 1 : 0;
  if (i == text.size()) return false;
  for (size_t j = i; j < text.size(); ++j) {
    if (!std::isdigit(static_cast<unsigned char>(text[j]))) return false;
  }
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) return false;
  out = static_cast<int64_t>(value);
  return true;
}

// Whole-string finite floating-point number in the C locale's syntax.
bool parse_float(const std::string& text, double& out) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return false;
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(value)) return false;
  out = value;
  return true;
}

// Comma-separated items, each trimmed; "" and "[]" give no items; surrounding brackets dropped.
std::vector<std::string> split_list(const std::string& text) {
  std::string body = trim(text);
  if (body.size() >= 2 && body.front() == '[' && body.back() == ']') {
    body = trim(body.substr(1, body.size() - 2));
  }
  std::vector<std::string> items;
  if (body.empty()) return items;
  size_t start = 0;
  while (true) {
    const size_t comma = body.find(',', start);
    items.push_back(trim(body.substr(start, comma == std::string::npos ? std::string::npos
                                                                        : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

std::string quote(const std::string& text) { return "'" + text + "'"; }

// Whether `text` is valid UTF-8, which a JSON string must be (nlohmann's dump() throws on it).
bool valid_utf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

}  // namespace

std::string field_type_name(FieldType type) {
  switch (type) {
    case FieldType::Int: return "int";
    case FieldType::Float: return "float";
    case FieldType::Bool: return "bool";
    case FieldType::String: return "string";
    case FieldType::IntList: return "int list";
    case FieldType::StringList: return "string list";
  }
  return "?";
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

ConfigSchemaBase::ConfigSchemaBase(std::string name) : name_(std::move(name)) {
  TORCH_CHECK(!name_.empty(), "ConfigSchema: empty config name");
}

void ConfigSchemaBase::fail(const std::string& source, const std::string& message) const {
  C10_THROW_ERROR(Error, "config " + name_ + ": " + source + ": " + message);
}

std::vector<std::string> ConfigSchemaBase::keys() const {
  std::vector<std::string> out;
  for (const auto& f : fields_) out.push_back(f.key);
  return out;
}

std::vector<std::string> ConfigSchemaBase::preset_names() const {
  std::vector<std::string> out;
  for (const auto& p : presets_) out.push_back(p.name);
  return out;
}

bool ConfigSchemaBase::has_key(const std::string& key) const {
  return std::any_of(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
}

void ConfigSchemaBase::add_field(Field field) {
  if (!valid_key(field.key)) {
    fail("schema", "field key " + quote(field.key) + " must match [a-z][a-z0-9_]*");
  }
  if (has_key(field.key)) fail("schema", "field " + quote(field.key) + " declared twice");
  if (!presets_.empty()) {
    fail("schema", "field " + quote(field.key) + " declared after a preset; declare fields first");
  }
  fields_.push_back(std::move(field));
}

void ConfigSchemaBase::add_preset(Preset preset) {
  if (preset.name.empty()) fail("schema", "empty preset name");
  for (const auto& p : presets_) {
    if (p.name == preset.name) fail("schema", "preset " + quote(preset.name) + " declared twice");
  }
  // Checked now, so a broken preset is a declaration error rather than a user's error.
  nlohmann::json scratch = nlohmann::json::object();
  const std::string source = "preset " + quote(preset.name);
  if (!preset.values.is_object()) fail(source, "values must be a JSON object");
  for (auto it = preset.values.begin(); it != preset.values.end(); ++it) {
    it.value() = check_value(field_info(it.key(), source), it.value(), source);
  }
  presets_.push_back(std::move(preset));
}

void ConfigSchemaBase::add_upgrade(std::function<void(nlohmann::json&)> upgrade) {
  upgrades_.push_back(std::move(upgrade));
}

const ConfigSchemaBase::Field& ConfigSchemaBase::field_info(const std::string& key,
                                                            const std::string& source) const {
  for (const auto& f : fields_) {
    if (f.key == key) return f;
  }
  std::string hint;
  size_t best = std::max<size_t>(2, key.size() / 3) + 1;
  for (const auto& f : fields_) {
    const size_t d = edit_distance(key, f.key);
    if (d < best) {
      best = d;
      hint = " (did you mean " + quote(f.key) + "?)";
    }
  }
  fail(source, "unknown key " + quote(key) + hint + "; valid keys: " + join_names(keys()));
}

nlohmann::json ConfigSchemaBase::check_value(const Field& field, const nlohmann::json& value,
                                             const std::string& source) const {
  const auto bad = [&](const std::string& why = "") {
    fail(source, quote(field.key) + " expects " + field_type_name(field.type) + ", got " +
                     value.dump() + why);
  };
  const auto in_range = [&](const nlohmann::json& v) {
    if (v.is_number_unsigned()) {
      return v.get<uint64_t>() <= static_cast<uint64_t>(field.max);
    }
    const int64_t x = v.get<int64_t>();
    return x >= field.min && x <= field.max;
  };
  const std::string range = " (out of range [" + std::to_string(field.min) + ", " +
                            std::to_string(field.max) + "])";
  switch (field.type) {
    case FieldType::Int:
      if (!value.is_number_integer()) bad();
      if (!in_range(value)) bad(range);
      return nlohmann::json(value.get<int64_t>());
    case FieldType::Float:
      if (!value.is_number()) bad();
      return nlohmann::json(value.get<double>());
    case FieldType::Bool:
      if (!value.is_boolean()) bad();
      return value;
    case FieldType::String:
      if (!value.is_string()) bad();
      return value;
    case FieldType::IntList: {
      if (!value.is_array()) bad();
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : value) {
        if (!item.is_number_integer()) bad();
        if (!in_range(item)) bad(range);
        out.push_back(item.get<int64_t>());
      }
      return out;
    }
    case FieldType::StringList:
      if (!value.is_array()) bad();
      for (const auto& item : value) {
        if (!item.is_string()) bad();
      }
      return value;
  }
  bad();
  return {};
}

nlohmann::json ConfigSchemaBase::parse_value(const Field& field, const std::string& text,
                                             const std::string& source) const {
  const auto bad = [&](const std::string& why = "") {
    fail(source, quote(field.key) + " expects " + field_type_name(field.type) + ", got " +
                     quote(text) + why);
  };
  switch (field.type) {
    case FieldType::Int: {
      int64_t x = 0;
      if (!parse_int(trim(text), x)) bad();
      if (x < field.min || x > field.max) {
        bad(" (out of range [" + std::to_string(field.min) + ", " + std::to_string(field.max) +
            "])");
      }
      return x;
    }
    case FieldType::Float: {
      double x = 0;
      if (!parse_float(trim(text), x)) bad();
      return x;
    }
    case FieldType::Bool: {
      const std::string t = lower(trim(text));
      if (t == "true" || t == "1") return true;
      if (t == "false" || t == "0") return false;
      bad(" (use true/false or 1/0)");
      return {};
    }
    case FieldType::String:
      if (!valid_utf8(text)) bad(" (not valid UTF-8)");
      return text;
    case FieldType::IntList: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : split_list(text)) {
        int64_t x = 0;
        if (!parse_int(item, x)) bad(" (item " + quote(item) + " is not an int)");
        if (x < field.min || x > field.max) bad(" (item " + quote(item) + " out of range)");
        out.push_back(x);
      }
      return out;
    }
    case FieldType::StringList: {
      nlohmann::json out = nlohmann::json::array();
      if (!valid_utf8(text)) bad(" (not valid UTF-8)");
      for (const auto& item : split_list(text)) out.push_back(item);
      return out;
    }
  }
  bad();
  return {};
}

void ConfigSchemaBase::apply_json(nlohmann::json& values, const nlohmann::json& patch,
                                  const std::string& source) const {
  if (!patch.is_object()) fail(source, "expected a JSON object, got " + patch.dump());
  for (auto it = patch.begin(); it != patch.end(); ++it) {
    values[it.key()] = check_value(field_info(it.key(), source), it.value(), source);
  }
}

void ConfigSchemaBase::apply_assignment(nlohmann::json& values,
                                        const std::string& assignment) const {
  const std::string source = "--set " + assignment;
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos) fail(source, "expected key=value");
  std::string key = trim(assignment.substr(0, eq));
  if (key.rfind("--", 0) == 0) key = key.substr(2);
  if (key.empty()) fail(source, "expected key=value, the key is empty");
  const Field& field = field_info(key, source);
  values[key] = parse_value(field, assignment.substr(eq + 1), source);
}

void ConfigSchemaBase::apply_preset(nlohmann::json& values, const std::string& preset) const {
  for (const auto& p : presets_) {
    if (p.name == preset) {
      apply_json(values, p.values, "preset " + quote(p.name));
      return;
    }
  }
  const auto names = preset_names();
  fail("--preset " + preset, "unknown preset " + quote(preset) + "; valid presets: " +
                                 (names.empty() ? std::string("(none)") : join_names(names)));
}

void ConfigSchemaBase::apply_file(nlohmann::json& values, const std::string& path,
                                  bool file_is_saved_run) const {
  const std::string source = "file " + path;
  std::string text;
  try {
    text = util::read_file(path, "config " + name_);
  } catch (const c10::Error& e) {
    fail(source, "cannot read it (" + std::string(e.what_without_backtrace()) + ")");
  }
  nlohmann::json patch;
  try {
    patch = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // also out_of_range: 1e999
    fail(source, std::string("not valid JSON: ") + e.what());
  }
  if (file_is_saved_run && patch.is_object()) upgrade_saved(patch);
  apply_json(values, patch, source);
}

void ConfigSchemaBase::upgrade_saved(nlohmann::json& saved) const {
  for (const auto& upgrade : upgrades_) upgrade(saved);
}

void ConfigSchemaBase::apply_sources(nlohmann::json& values, const ConfigSources& sources) const {
  if (!sources.preset.empty()) apply_preset(values, sources.preset);
  if (!sources.file.empty()) apply_file(values, sources.file, sources.file_is_saved_run);
  for (const auto& assignment : sources.sets) apply_assignment(values, assignment);
}

std::string ConfigSchemaBase::format(const nlohmann::json& values) const {
  size_t key_width = 0, value_width = 0;
  std::vector<std::string> texts;
  for (const auto& f : fields_) {
    texts.push_back(values.contains(f.key) ? values.at(f.key).dump() : "<unset>");
    key_width = std::max(key_width, f.key.size());
    value_width = std::max(value_width, std::min<size_t>(texts.back().size(), 24));
  }
  std::ostringstream out;
  out << "config " << name_ << ":\n";
  for (size_t i = 0; i < fields_.size(); ++i) {
    const auto& f = fields_[i];
    out << "  " << f.key << std::string(key_width - f.key.size(), ' ') << " = " << texts[i];
    if (!f.help.empty()) {
      out << std::string(value_width > texts[i].size() ? value_width - texts[i].size() : 0, ' ')
          << "  # " << f.help;
    }
    out << "\n";
  }
  return out.str();
}

std::string ConfigSchemaBase::format_help(const nlohmann::json& defaults) const {
  std::vector<std::string> lefts;
  size_t width = 0;
  for (const auto& f : fields_) {
    lefts.push_back(f.key + "=<" + field_type_name(f.type) + ">");
    width = std::max(width, lefts.back().size());
  }
  std::ostringstream out;
  out << "Settings of " << name_ << " (--set key=value, or a JSON file of them):\n";
  for (size_t i = 0; i < fields_.size(); ++i) {
    const auto& f = fields_[i];
    out << "  " << lefts[i] << std::string(width - lefts[i].size(), ' ') << "  " << f.help;
    if (defaults.contains(f.key)) out << " (default " << defaults.at(f.key).dump() << ")";
    out << "\n";
  }
  if (!presets_.empty()) {
    out << "Presets (--preset name):\n";
    for (const auto& p : presets_) {
      out << "  " << p.name << (p.help.empty() ? "" : ": " + p.help) << " " << p.values.dump()
          << "\n";
    }
  }
  return out.str();
}

std::string ConfigSchemaBase::dump(const nlohmann::json& values) const {
  nlohmann::ordered_json ordered = nlohmann::ordered_json::object();
  for (const auto& f : fields_) {
    if (values.contains(f.key)) ordered[f.key] = nlohmann::ordered_json::parse(values.at(f.key).dump());
  }
  return ordered.dump(2) + "\n";
}

std::vector<std::string> ConfigSchemaBase::diff(const nlohmann::json& before,
                                                const nlohmann::json& after) const {
  std::vector<std::string> out;
  for (const auto& f : fields_) {
    const auto a = before.contains(f.key) ? before.at(f.key).dump() : "<unset>";
    const auto b = after.contains(f.key) ? after.at(f.key).dump() : "<unset>";
    if (a != b) out.push_back(f.key + ": " + a + " -> " + b);
  }
  return out;
}

void save_config_text(const std::string& path, const std::string& text) {
  util::write_file_atomic(path, text, "save config");
}

}  // namespace train
}  // namespace kvq
