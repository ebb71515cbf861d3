#include "kvq/util/sampler.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace kvq {
namespace util {

std::string rng_state(const std::mt19937_64& engine) {
  std::ostringstream out;
  out << engine;
  return out.str();
}

std::mt19937_64 rng_from_state(const std::string& state, const std::string& who) {
  std::istringstream in(state);
  std::mt19937_64 engine;
  in >> engine;
  TORCH_CHECK(!in.fail(), who, ": not a std::mt19937_64 state (", state.size(), " characters)");
  in >> std::ws;
  TORCH_CHECK(in.eof(), who, ": trailing text after the std::mt19937_64 state");
  return engine;
}

uint64_t uniform_below(std::mt19937_64& engine, uint64_t n) {
  TORCH_CHECK(n >= 1, "uniform_below: n must be >= 1");
  const uint64_t limit = std::mt19937_64::max() - std::mt19937_64::max() % n;
  uint64_t x;
  do {
    x = engine();
  } while (x >= limit);
  return x % n;
}

torch::Tensor random_permutation(std::mt19937_64& engine, int64_t n) {
  TORCH_CHECK(n >= 0, "random_permutation: n must be >= 0, got ", n);
  auto perm = torch::arange(n, torch::kInt64);
  int64_t* p = perm.data_ptr<int64_t>();
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(uniform_below(engine, static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return perm;
}

BatchSampler::BatchSampler(int64_t num_items, int64_t batch_size, uint64_t seed,
                           BatchSamplerOptions options)
    : num_items_(num_items),
      batch_size_(batch_size),
      options_(options),
      rng_(seed),
      epoch_start_rng_(seed) {
  TORCH_CHECK(num_items >= 1, "BatchSampler: num_items must be >= 1, got ", num_items);
  TORCH_CHECK(batch_size >= 1, "BatchSampler: batch_size must be >= 1, got ", batch_size);
  TORCH_CHECK(batches_per_epoch() >= 1, "BatchSampler: ", num_items,
              " items make no complete batch of ", batch_size, " (drop_last)");
}

int64_t BatchSampler::batches_per_epoch() const {
  return options_.drop_last() ? num_items_ / batch_size_
                              : (num_items_ + batch_size_ - 1) / batch_size_;
}

torch::Tensor BatchSampler::next() {
  if (!order_.defined()) {
    epoch_start_rng_ = rng_;
    order_ = options_.shuffle() ? random_permutation(rng_, num_items_)
                                : torch::arange(num_items_, torch::kInt64);
  }
  const int64_t begin = batch_ * batch_size_;
  const int64_t end = std::min(begin + batch_size_, num_items_);
  auto batch = order_.slice(0, begin, end).clone();
  if (++batch_ == batches_per_epoch()) {
    batch_ = 0;
    ++epoch_;
    order_ = torch::Tensor();
  }
  return batch;
}

nlohmann::json BatchSampler::state() const {
  return {{"num_items", num_items_},
          {"batch_size", batch_size_},
          {"shuffle", options_.shuffle()},
          {"drop_last", options_.drop_last()},
          {"epoch", epoch_},
          {"batch", batch_},
          {"rng", rng_state(order_.defined() ? epoch_start_rng_ : rng_)}};
}

void BatchSampler::load_state(const nlohmann::json& state) {
  const char* who = "BatchSampler::load_state";
  TORCH_CHECK(state.is_object(), who, ": expected a JSON object");
  for (const char* key : {"num_items", "batch_size", "shuffle", "drop_last", "epoch", "batch", "rng"}) {
    TORCH_CHECK(state.contains(key), who, ": missing '", key, "'");
  }
  const auto expect = [&](const char* key, const nlohmann::json& mine) {
    TORCH_CHECK(state.at(key) == mine, who, ": the saved sampler has ", key, " = ",
                state.at(key).dump(), ", this one ", mine.dump());
  };
  expect("num_items", num_items_);
  expect("batch_size", batch_size_);
  expect("shuffle", options_.shuffle());
  expect("drop_last", options_.drop_last());
  TORCH_CHECK(state.at("epoch").is_number_integer() && state.at("epoch").get<int64_t>() >= 0,
              who, ": bad epoch ", state.at("epoch").dump());
  TORCH_CHECK(state.at("batch").is_number_integer() && state.at("batch").get<int64_t>() >= 0 &&
                  state.at("batch").get<int64_t>() < batches_per_epoch(),
              who, ": bad batch ", state.at("batch").dump(), " (", batches_per_epoch(),
              " batches per epoch)");
  TORCH_CHECK(state.at("rng").is_string(), who, ": 'rng' must be a string");
  rng_ = rng_from_state(state.at("rng").get<std::string>(), who);
  epoch_start_rng_ = rng_;
  epoch_ = state.at("epoch").get<int64_t>();
  batch_ = state.at("batch").get<int64_t>();
  order_ = torch::Tensor();
  if (batch_ > 0) {
    order_ = options_.shuffle() ? random_permutation(rng_, num_items_)
                                : torch::arange(num_items_, torch::kInt64);
  }
}

}  // namespace util
}  // namespace kvq
