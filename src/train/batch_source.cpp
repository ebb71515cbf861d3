#include "kvq/train/batch_source.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "kvq/util/join_names.h"

namespace kvq {
namespace train {

namespace {

std::string field_names(const std::vector<std::pair<std::string, torch::Tensor>>& fields) {
  std::vector<std::string> names;
  for (const auto& field : fields) names.push_back(field.first);
  return names.empty() ? "(none)" : util::join_names(names);
}

}  // namespace

Batch::Batch(std::initializer_list<std::pair<std::string, torch::Tensor>> fields) {
  for (const auto& [name, tensor] : fields) set(name, tensor);
}

Batch& Batch::set(const std::string& name, torch::Tensor tensor) {
  TORCH_CHECK(tensor.defined() && tensor.dim() >= 1, "Batch: field '", name,
              "' must be a tensor with at least one dimension (its rows)");
  for (auto& field : fields_) {
    if (field.first == name) {
      field.second = std::move(tensor);
      return *this;
    }
  }
  fields_.emplace_back(name, std::move(tensor));
  return *this;
}

const torch::Tensor& Batch::operator[](const std::string& name) const {
  for (const auto& field : fields_) {
    if (field.first == name) return field.second;
  }
  TORCH_CHECK(false, "Batch: no field '", name, "'; the fields are: ", field_names(fields_));
}

int64_t Batch::rows() const {
  if (fields_.empty()) return 0;
  const int64_t rows = fields_.front().second.size(0);
  for (const auto& [name, tensor] : fields_) {
    TORCH_CHECK(tensor.size(0) == rows, "Batch: field '", name, "' has ", tensor.size(0),
                " rows, field '", fields_.front().first, "' has ", rows,
                "; the fields of a batch share their rows");
  }
  return rows;
}

BatchSource BatchSource::rows_of(Batch data, util::BatchSampler& sampler) {
  TORCH_CHECK(!data.empty(), "BatchSource::rows_of: the data has no field");
  TORCH_CHECK(data.rows() == sampler.num_items(), "BatchSource::rows_of: the data has ",
              data.rows(), " rows, the sampler draws from ", sampler.num_items());
  BatchSource source;
  source.data_ = std::move(data);
  source.sampler_ = &sampler;
  return source;
}

BatchSource BatchSource::drawn(std::function<Batch(int64_t step)> draw) {
  TORCH_CHECK(draw != nullptr, "BatchSource::drawn: the draw function must be set");
  BatchSource source;
  source.draw_ = std::move(draw);
  return source;
}

BatchSource& BatchSource::on_host(std::vector<std::string> names) {
  host_fields_ = std::move(names);
  return *this;
}

Batch BatchSource::next(int64_t step, int64_t rank, int64_t world, const torch::Device& device) {
  TORCH_CHECK(world == 1 || sampler_ != nullptr || draw_ != nullptr,
              "train: with ", world, " workers the loop needs the batch (TrainingLoop::batches) "
              "to give each worker its share");
  if (sampler_ == nullptr && draw_ == nullptr) return {};
  torch::Tensor index = sampler_ != nullptr ? sampler_->next() : torch::Tensor();
  const Batch whole = sampler_ != nullptr ? data_ : draw_(step);
  const int64_t rows = sampler_ != nullptr ? index.size(0) : whole.rows();
  const bool shared = world > 1;
  int64_t begin = 0, end = rows;
  if (shared) {
    TORCH_CHECK(rows > 0 && rows % world == 0, "train: the batch of ", rows,
                " items is not divisible by the ", world,
                " workers; batch_size must be a multiple of the world size");
    begin = rows * rank / world;
    end = rows * (rank + 1) / world;
    if (index.defined()) index = index.slice(0, begin, end);
  }
  Batch out;
  for (const auto& [name, tensor] : whole.fields()) {
    torch::Tensor rows_here = index.defined() ? tensor.index_select(0, index)
                              : shared        ? tensor.slice(0, begin, end)
                                              : tensor;
    const bool on_host =
        std::find(host_fields_.begin(), host_fields_.end(), name) != host_fields_.end();
    out.set(name, on_host ? rows_here : rows_here.to(device));
  }
  return out;
}

}  // namespace train
}  // namespace kvq
