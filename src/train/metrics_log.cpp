#include "kvq/train/metrics_log.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "kvq/util/atomic_file.h"

namespace kvq {
namespace train {

namespace {

// Non-finite numbers as strings (JSON cannot hold them), recursively.
nlohmann::json encode_non_finite(const nlohmann::json& value) {
  if (value.is_number_float()) {
    const double x = value.get<double>();
    if (std::isnan(x)) return "NaN";
    if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
    return value;
  }
  if (value.is_structured()) {
    nlohmann::json out = value;
    for (auto it = out.begin(); it != out.end(); ++it) it.value() = encode_non_finite(it.value());
    return out;
  }
  return value;
}

nlohmann::json decode_non_finite(const nlohmann::json& value) {
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
    return value;
  }
  if (value.is_structured()) {
    nlohmann::json out = value;
    for (auto it = out.begin(); it != out.end(); ++it) it.value() = decode_non_finite(it.value());
    return out;
  }
  return value;
}

// Length of the file up to and including its last newline.
off_t complete_length(int fd) {
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size <= 0) return size < 0 ? 0 : size;
  char buffer[4096];
  off_t end = size;
  while (end > 0) {
    const off_t start = end > static_cast<off_t>(sizeof(buffer)) ? end - sizeof(buffer) : 0;
    const ssize_t n = ::pread(fd, buffer, static_cast<size_t>(end - start), start);
    if (n <= 0) return size;  // unreadable: leave the file as it is
    for (ssize_t i = n - 1; i >= 0; --i) {
      if (buffer[i] == '\n') return start + i + 1;
    }
    end = start;
  }
  return 0;
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  const std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  TORCH_CHECK(!ec, "MetricsWriter: cannot create the directory of ", path, ": ", ec.message());
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  TORCH_CHECK(fd_ >= 0, "MetricsWriter: cannot open ", path, ": ", std::strerror(errno));
  const off_t size = ::lseek(fd_, 0, SEEK_END);
  const off_t complete = complete_length(fd_);
  if (complete < size && ::ftruncate(fd_, complete) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    TORCH_CHECK(false, "MetricsWriter: cannot cut the torn last line of ", path, ": ",
                std::strerror(err));
  }
}

MetricsWriter::~MetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void MetricsWriter::write(const nlohmann::json& record) {
  TORCH_CHECK(fd_ >= 0, "MetricsWriter: ", path_, " is closed");
  TORCH_CHECK(record.is_object(), "MetricsWriter: ", path_, ": a record must be a JSON object, got ",
              record.dump());
  const std::string line = encode_non_finite(record).dump() + "\n";
  const char* data = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, data, left);
    if (n < 0 && errno == EINTR) continue;
    TORCH_CHECK(n > 0, "MetricsWriter: writing ", path_, " failed: ", std::strerror(errno));
    data += n;
    left -= static_cast<size_t>(n);
  }
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  const std::string text = util::read_file(path, "read_metrics");
  std::vector<nlohmann::json> records;
  size_t start = 0;
  int64_t line_number = 0;
  while (start < text.size()) {
    ++line_number;
    const size_t newline = text.find('\n', start);
    if (newline == std::string::npos) break;  // torn last line
    const std::string line = text.substr(start, newline - start);
    start = newline + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // also out_of_range: 1e999
      TORCH_CHECK(false, "read_metrics: ", path, ":", line_number, ": not valid JSON: ", e.what());
    }
    TORCH_CHECK(record.is_object(), "read_metrics: ", path, ":", line_number,
                ": not a JSON object");
    records.push_back(decode_non_finite(record));
  }
  return records;
}

int64_t truncate_metrics(const std::string& path, int64_t max_step, const std::string& step_key) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return 0;
  const auto records = read_metrics(path);
  std::string kept;
  int64_t dropped = 0;
  for (const auto& r : records) {
    if (r.contains(step_key) && r.at(step_key).is_number() &&
        r.at(step_key).get<double>() > static_cast<double>(max_step)) {
      ++dropped;
      continue;
    }
    kept += encode_non_finite(r).dump() + "\n";
  }
  util::write_file_atomic(path, kept, "truncate_metrics");
  return dropped;
}

void write_results(const std::string& path, const nlohmann::json& summary) {
  TORCH_CHECK(summary.is_object(), "write_results: ", path, ": the summary must be a JSON object");
  util::write_file_atomic(path, encode_non_finite(summary).dump(2) + "\n", "write_results");
}

nlohmann::json read_results(const std::string& path) {
  const std::string text = util::read_file(path, "read_results");
  nlohmann::json results;
  try {
    results = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // also out_of_range: 1e999
    TORCH_CHECK(false, "read_results: ", path, ": not valid JSON: ", e.what());
  }
  TORCH_CHECK(results.is_object(), "read_results: ", path, ": not a JSON object");
  TORCH_CHECK(results.contains("test") && results.at("test").is_object(), "read_results: ", path,
              ": no \"test\" object (the test metrics of a finished run)");
  for (const char* key : {"test", "best_val"}) {
    if (!results.contains(key) || !results.at(key).is_object()) continue;
    auto& object = results.at(key);
    for (auto it = object.begin(); it != object.end(); ++it) {
      auto& value = it.value();
      if (value.is_null()) value = std::numeric_limits<double>::quiet_NaN();
      value = decode_non_finite(value);
    }
  }
  for (const auto& [name, value] : results.at("test").items()) {
    TORCH_CHECK(value.is_number(), "read_results: ", path, ": test metric \"", name,
                "\" is not a number: ", value.dump());
  }
  TORCH_CHECK(!results.contains("train_seconds") || results.at("train_seconds").is_number(),
              "read_results: ", path, ": \"train_seconds\" is not a number: ",
              results.at("train_seconds").dump());
  for (const char* key : {"params", "steps"}) {
    TORCH_CHECK(!results.contains(key) || results.at(key).is_number_integer(), "read_results: ",
                path, ": \"", key, "\" is not an integer: ", results.at(key).dump());
  }
  for (const char* key : {"task", "mechanism", "projection"}) {
    TORCH_CHECK(!results.contains(key) || results.at(key).is_string(), "read_results: ", path,
                ": \"", key, "\" is not a string: ", results.at(key).dump());
  }
  return results;
}

MetricSeries metric_series(const std::vector<nlohmann::json>& records, const std::string& y_key,
                           const std::string& x_key, const nlohmann::json& where) {
  TORCH_CHECK(where.is_object(), "metric_series: `where` must be a JSON object, got ",
              where.dump());
  MetricSeries series;
  for (const auto& r : records) {
    if (!r.contains(x_key) || !r.contains(y_key)) continue;
    if (!r.at(x_key).is_number() || !r.at(y_key).is_number()) continue;
    bool match = true;
    for (auto it = where.begin(); it != where.end() && match; ++it) {
      match = r.contains(it.key()) && r.at(it.key()) == it.value();
    }
    if (!match) continue;
    series.x.push_back(r.at(x_key).get<double>());
    series.y.push_back(r.at(y_key).get<double>());
  }
  return series;
}

}  // namespace train
}  // namespace kvq
