#include "kvq/train/schedules.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "kvq/util/join_names.h"

namespace kvq {
namespace train {

namespace {

constexpr double kPi = 3.14159265358979323846;

void check_step(const char* who, int64_t step) {
  TORCH_CHECK(step >= 0, who, ": step must be >= 0, got ", step);
}

}  // namespace

double constant_lr(int64_t step, double base_lr) {
  check_step("constant_lr", step);
  return base_lr;
}

double warmup_cosine_lr(int64_t step, double base_lr, int64_t warmup_steps, int64_t total_steps,
                        double min_lr) {
  check_step("warmup_cosine_lr", step);
  TORCH_CHECK(warmup_steps >= 0, "warmup_cosine_lr: warmup_steps must be >= 0, got ",
              warmup_steps);
  TORCH_CHECK(total_steps > warmup_steps, "warmup_cosine_lr: total_steps (", total_steps,
              ") must be > warmup_steps (", warmup_steps, ")");
  if (step < warmup_steps) {
    return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  if (step > total_steps) return min_lr;
  const double ratio =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(kPi * ratio));
}

double cosine_product_lr(int64_t step, double base_lr, int64_t warmup_steps, int64_t total_steps,
                         double min_lr) {
  check_step("cosine_product_lr", step);
  TORCH_CHECK(warmup_steps >= 1, "cosine_product_lr: warmup_steps must be >= 1, got ",
              warmup_steps);
  TORCH_CHECK(total_steps >= 1, "cosine_product_lr: total_steps must be >= 1, got ",
              total_steps);
  const double t = static_cast<double>(std::min(step, total_steps));
  double factor = 0.5 * (1.0 + std::cos(kPi * t / static_cast<double>(total_steps)));
  if (step < warmup_steps) factor *= static_cast<double>(step) / static_cast<double>(warmup_steps);
  return min_lr + (base_lr - min_lr) * factor;
}

double noam_lr(int64_t step, int64_t d_model, int64_t warmup_steps, double factor) {
  check_step("noam_lr", step);
  TORCH_CHECK(d_model >= 1, "noam_lr: d_model must be >= 1, got ", d_model);
  TORCH_CHECK(warmup_steps >= 1, "noam_lr: warmup_steps must be >= 1, got ", warmup_steps);
  const double s = static_cast<double>(step + 1);
  return factor * std::pow(static_cast<double>(d_model), -0.5) *
         std::min(std::pow(s, -0.5), s * std::pow(static_cast<double>(warmup_steps), -1.5));
}

std::vector<std::string> lr_schedule_kinds() {
  return {"constant", "cosine", "cosine-product", "noam"};
}

void validate(const LrSchedule& s) {
  const auto& kinds = lr_schedule_kinds();
  TORCH_CHECK(std::find(kinds.begin(), kinds.end(), s.kind) != kinds.end(),
              "lr schedule: unknown kind '", s.kind, "'; valid kinds: ", util::join_names(lr_schedule_kinds()));
  if (s.kind == "cosine") {
    TORCH_CHECK(s.warmup_steps >= 0, "lr schedule cosine: warmup_steps must be >= 0, got ",
                s.warmup_steps);
    TORCH_CHECK(s.total_steps > s.warmup_steps, "lr schedule cosine: total_steps (",
                s.total_steps, ") must be > warmup_steps (", s.warmup_steps, ")");
  } else if (s.kind == "cosine-product") {
    TORCH_CHECK(s.warmup_steps >= 1, "lr schedule cosine-product: warmup_steps must be >= 1, got ",
                s.warmup_steps);
    TORCH_CHECK(s.total_steps >= 1, "lr schedule cosine-product: total_steps must be >= 1, got ",
                s.total_steps);
  } else if (s.kind == "noam") {
    TORCH_CHECK(s.d_model >= 1, "lr schedule noam: d_model must be >= 1, got ", s.d_model);
    TORCH_CHECK(s.warmup_steps >= 1, "lr schedule noam: warmup_steps must be >= 1, got ",
                s.warmup_steps);
  }
}

double learning_rate(const LrSchedule& s, int64_t step) {
  validate(s);
  if (s.kind == "cosine") {
    return warmup_cosine_lr(step, s.base_lr, s.warmup_steps, s.total_steps, s.min_lr);
  }
  if (s.kind == "cosine-product") {
    return cosine_product_lr(step, s.base_lr, s.warmup_steps, s.total_steps, s.min_lr);
  }
  if (s.kind == "noam") return noam_lr(step, s.d_model, s.warmup_steps, s.factor);
  return constant_lr(step, s.base_lr);
}

nlohmann::json to_json(const LrSchedule& s) {
  return {{"kind", s.kind},         {"base_lr", s.base_lr},         {"min_lr", s.min_lr},
          {"warmup_steps", s.warmup_steps}, {"total_steps", s.total_steps},
          {"d_model", s.d_model},   {"factor", s.factor}};
}

LrSchedule lr_schedule_from_json(const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "lr schedule: expected a JSON object, got ", j.dump());
  const std::vector<std::string> keys = {"kind",        "base_lr", "min_lr", "warmup_steps",
                                         "total_steps", "d_model", "factor"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    TORCH_CHECK(std::find(keys.begin(), keys.end(), it.key()) != keys.end(),
                "lr schedule: unknown key '", it.key(), "' in ", j.dump());
  }
  const auto get = [&](const std::string& key, auto& out, bool (nlohmann::json::*ok)() const
                                                              noexcept) {
    TORCH_CHECK(j.contains(key), "lr schedule: missing key '", key, "' in ", j.dump());
    TORCH_CHECK((j.at(key).*ok)(), "lr schedule: key '", key, "' has the wrong type in ",
                j.dump());
    out = j.at(key).get<std::decay_t<decltype(out)>>();
  };
  LrSchedule s;
  get("kind", s.kind, &nlohmann::json::is_string);
  get("base_lr", s.base_lr, &nlohmann::json::is_number);
  get("min_lr", s.min_lr, &nlohmann::json::is_number);
  get("warmup_steps", s.warmup_steps, &nlohmann::json::is_number_integer);
  get("total_steps", s.total_steps, &nlohmann::json::is_number_integer);
  get("d_model", s.d_model, &nlohmann::json::is_number_integer);
  get("factor", s.factor, &nlohmann::json::is_number);
  validate(s);
  return s;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, "set_learning_rate: lr must be finite and >= 0, got ",
              lr);
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double get_learning_rate(const torch::optim::Optimizer& optimizer) {
  TORCH_CHECK(!optimizer.param_groups().empty(), "get_learning_rate: the optimizer has no groups");
  return optimizer.param_groups().front().options().get_lr();
}

}  // namespace train
}  // namespace kvq
