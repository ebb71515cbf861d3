#include "kvq/tasks/common_config.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "kvq/train/flops.h"

namespace kvq {
namespace tasks {

namespace detail {

bool contains_name(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::function<void(nlohmann::json&)> upgrade_zero_ffn_dim(int64_t multiple) {
  return [multiple](nlohmann::json& saved) {
    const auto ffn = saved.find("ffn_dim");
    const auto d_model = saved.find("d_model");
    if (ffn == saved.end() || d_model == saved.end() || !ffn->is_number_integer() ||
        ffn->get<int64_t>() != 0 || !d_model->is_number_integer()) {
      return;
    }
    *ffn = multiple * d_model->get<int64_t>();
  };
}

}  // namespace detail

std::string resolved_projection(const CommonTaskConfig& c) {
  return projection_name(nn::resolved_projection(c.block.attention()));
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<torch::Tensor>& parameters, const CommonTaskConfig& c) {
  if (c.optimizer == "adamw") {
    return std::make_unique<torch::optim::AdamW>(parameters, torch::optim::AdamWOptions(c.lr)
                                                                 .betas({c.beta1, c.beta2})
                                                                 .eps(c.adam_eps)
                                                                 .weight_decay(c.weight_decay));
  }
  TORCH_CHECK(c.optimizer == "adam", "config: optimizer must be adam or adamw, got '",
              c.optimizer, "'");
  return std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(c.lr)
                                                              .betas({c.beta1, c.beta2})
                                                              .eps(c.adam_eps)
                                                              .weight_decay(c.weight_decay));
}

train::LrSchedule make_schedule(const CommonTaskConfig& c, int64_t total_steps,
                                const std::string& schema_name) {
  train::LrSchedule s;
  s.kind = c.schedule;
  s.base_lr = c.lr;
  s.min_lr = c.min_lr;
  s.warmup_steps = c.warmup_steps;
  s.total_steps = total_steps;
  s.d_model = c.block.d_model();
  s.factor = c.lr;
  try {
    train::validate(s);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config ", schema_name, ": schedule '", c.schedule, "' with warmup_steps = ",
                c.warmup_steps, " over ", total_steps, " updates: ", e.what_without_backtrace());
  }
  return s;
}

uint64_t mix_seeds(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t stream_seed(int64_t run_seed, SeedStream stream) {
  const uint64_t seed = static_cast<uint64_t>(run_seed);
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
  switch (stream) {
    case SeedStream::kSyntheticBatches:
      return seed * kGolden + 0x5851F42D4C957F2DULL;
    case SeedStream::kImageBatches:
      return seed * kGolden + 0x632BE59BD9B4E019ULL;
    case SeedStream::kLanguageModelBatches:
      return seed * kGolden + 0x2545F4914F6CDD1DULL;
    case SeedStream::kTranslationBatches:
      return seed * kGolden + 0x7F4A7C159E3779B9ULL;
    case SeedStream::kDistillBatches:
      break;
  }
  return mix_seeds(seed, 0xD157111);
}

int64_t parameter_count(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

double token_training_flops(const torch::nn::Module& model, const torch::nn::ModuleList& blocks,
                            int64_t length, bool causal) {
  double attention = 0;
  for (const auto& module : blocks->children()) {
    const auto& o = module->as<models::TransformerBlockImpl>()->options;
    const int64_t head_dim = o.d_model() / o.num_heads();
    attention += train::attention_flops(o.mechanism(), o.num_heads(), length, head_dim, causal,
                                        o.chunk_size());
  }
  return 3.0 * (train::linear_flops_per_position(model) +
                attention / static_cast<double>(std::max<int64_t>(length, 1)));
}

}  // namespace tasks
}  // namespace kvq
