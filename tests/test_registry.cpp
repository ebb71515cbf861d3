// The registry: every registered mechanism runs through its MechanismFn, names are unique, the
// presets of docs/mechanisms.md are there with the documented projection / alpha / softmax flags.
#include <set>

#include "test_utils.h"

namespace kvq_test {
namespace {

TEST(Registry, NamesAreUniqueAndConsistent) {
  const auto& infos = kvq::mechanisms();
  const auto names = kvq::mechanism_names();
  ASSERT_EQ(infos.size(), names.size());
  std::set<std::string> seen;
  for (size_t i = 0; i < infos.size(); ++i) {
    EXPECT_EQ(infos[i].name, names[i]) << "mechanism_names() follows mechanisms()";
    EXPECT_FALSE(infos[i].name.empty());
    EXPECT_TRUE(seen.insert(infos[i].name).second) << "duplicate name " << infos[i].name;
    EXPECT_TRUE(static_cast<bool>(infos[i].fn)) << infos[i].name << " has no function";
    EXPECT_FALSE(infos[i].summary.empty()) << infos[i].name << " has no summary";
    EXPECT_EQ(kvq::find_mechanism(infos[i].name).name, infos[i].name);
  }
}

// The presets of the table in docs/mechanisms.md ("The grid").
TEST(Registry, DocumentedPresets) {
  struct Preset {
    std::string name;
    kvq::Projection projection;
    bool uses_alpha, has_softmax;
  };
  const std::vector<Preset> presets = {
      {"softmax", kvq::Projection::QKV, false, true},
      {"kv", kvq::Projection::KV, false, true},
      {"kv-pos", kvq::Projection::KVPos, false, true},
      {"linear", kvq::Projection::QKV, false, false},
      {"linear-identity", kvq::Projection::QKV, false, false},
      {"intention", kvq::Projection::QKV, true, false},
      {"softmax-intention", kvq::Projection::QKV, true, true},
      {"kernel-intention", kvq::Projection::QKV, true, false},
  };
  for (const auto& p : presets) {
    SCOPED_TRACE(p.name);
    const auto& info = kvq::find_mechanism(p.name);
    EXPECT_EQ(info.name, p.name);
    EXPECT_EQ(info.projection, p.projection);
    EXPECT_EQ(info.traits.uses_alpha, p.uses_alpha);
    EXPECT_EQ(info.traits.has_softmax, p.has_softmax);
  }
}

// Every registry row carries every piece: inner and functional forms, summary, family, op schema,
// FLOP formula, decoding prefill and step, a naive form for `kvq bench`, and a float64 oracle in
// the tests (reference/oracle_table.cpp), which the oracle, gradient and invariant suites use for
// every row. A new row without them fails here.
TEST(Registry, EveryRowHasEveryPiece) {
  const kvq::ProblemSize size{2, 3, 16, 4, 5};
  for (const auto& info : kvq::mechanisms()) {
    SCOPED_TRACE(info.name);
    EXPECT_TRUE(static_cast<bool>(info.call)) << "no functional form";
    EXPECT_TRUE(kvq_ref::find_oracle(info.name) != nullptr)
        << "no float64 oracle in tests/reference/oracle_table.cpp";
    EXPECT_FALSE(info.naive.empty()) << "no naive form (kvq bench would refuse it)";
    for (const auto& form : info.naive) {
      EXPECT_FALSE(form.label.empty());
      EXPECT_TRUE(form.fn && form.peak_bytes) << form.label;
    }
    EXPECT_TRUE(info.prefill && info.step) << "no incremental decoding";
    EXPECT_EQ(info.op.rfind("kvq::", 0), 0u) << "op schema '" << info.op << "'";
    ASSERT_TRUE(static_cast<bool>(info.forward_flops)) << "no FLOP formula";
    for (bool causal : {false, true}) EXPECT_GT(info.forward_flops(size, causal, 4), 0.0);
    EXPECT_EQ(info.family == kvq::Family::LeastSquares, info.traits.uses_alpha);
    if (info.family == kvq::Family::Softmax) {
      EXPECT_TRUE(info.traits.has_softmax);
    }
    if (info.family == kvq::Family::Linear) {
      EXPECT_FALSE(info.traits.has_softmax);
    }
  }
}

// The FLOP formula of softmax: 2 n^2 (d + dv) per head, n (n + 1) (d + dv) causal.
TEST(Registry, SoftmaxFlopFormula) {
  const auto& info = kvq::find_mechanism("softmax");
  const kvq::ProblemSize size{2, 3, 10, 4, 5};
  EXPECT_DOUBLE_EQ(info.forward_flops(size, false, 4), 6 * 2.0 * 100 * 9);
  EXPECT_DOUBLE_EQ(info.forward_flops(size, true, 4), 6 * 110.0 * 9);
}

TEST(Registry, ProjectionNamesRoundTrip) {
  for (auto p : {kvq::Projection::QKV, kvq::Projection::KV, kvq::Projection::KVPos}) {
    EXPECT_EQ(kvq::parse_projection(kvq::projection_name(p)), p);
  }
  EXPECT_EQ(kvq::projection_name(kvq::Projection::QKV), "qkv");
  EXPECT_EQ(kvq::projection_name(kvq::Projection::KV), "kv");
  EXPECT_EQ(kvq::projection_name(kvq::Projection::KVPos), "kv-pos");
}

// Every registered MechanismFn on a small fp32 input, causal and not, with and without a mask:
// right shape and dtype, finite. Queries equal the keys for the kv projections (as the layer
// would pass them); alpha is per head when the mechanism takes it, undefined otherwise.
TEST(Registry, EveryMechanismRuns) {
  const int64_t B = 2, H = 3, T = 11, d = 4, dv = 5;
  torch::manual_seed(81);
  const auto q = torch::randn({B, H, T, d});
  const auto k = torch::randn({B, H, T, d});
  const auto v = torch::randn({B, H, T, dv});
  const auto alpha = torch::tensor({0.5f, 1.0f, 2.0f});
  const auto mask = make_mask(MaskKind::Scattered, B, T);
  for (const auto& info : kvq::mechanisms()) {
    for (bool causal : {false, true}) {
      for (bool masked : {false, true}) {
        SCOPED_TRACE(info.name + (causal ? " causal" : "") + (masked ? " masked" : ""));
        const auto opt = F::AttentionFuncOptions().causal(causal).chunk_size(4).key_padding_mask(
            masked ? mask : torch::Tensor());
        const bool tied = info.projection != kvq::Projection::QKV;
        const auto out =
            info.fn(tied ? k : q, k, v, info.traits.uses_alpha ? alpha : torch::Tensor(), opt);
        ASSERT_TRUE(out.defined());
        EXPECT_EQ(out.sizes(), torch::IntArrayRef({B, H, T, dv}));
        EXPECT_EQ(out.scalar_type(), torch::kFloat32);
        EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
      }
    }
  }
}

// Cross-attention shapes (m != n) through the registry, non-causal.
TEST(Registry, EveryMechanismRunsCrossAttention) {
  const int64_t B = 2, H = 2, m = 6, n = 9, d = 4, dv = 3;
  torch::manual_seed(83);
  const auto q = torch::randn({B, H, m, d});
  const auto k = torch::randn({B, H, n, d});
  const auto v = torch::randn({B, H, n, dv});
  const auto alpha = torch::ones({});
  for (const auto& info : kvq::mechanisms()) {
    SCOPED_TRACE(info.name);
    const auto out =
        info.fn(q, k, v, info.traits.uses_alpha ? alpha : torch::Tensor(), F::AttentionFuncOptions());
    EXPECT_EQ(out.sizes(), torch::IntArrayRef({B, H, m, dv}));
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  }
}

// Through the registry, every row's inner mechanism (what MultiHeadKVQ calls: q = k for the kv
// projections, kv-pos's score terms in the options) equals its float64 oracle (fp64 inputs).
TEST(Registry, FunctionsMatchOracles) {
  Case c;
  c.B = 2, c.H = 2, c.m = c.n = 9, c.d = 4, c.dv = 3, c.mask = MaskKind::Scattered;
  c.alpha_per_head = true;
  for (const auto& info : kvq::mechanisms()) {
    for (bool causal : {false, true}) {
      const auto in = make_inputs(c, 85);
      const auto q = info.projection == kvq::Projection::QKV ? in.q : in.k;
      auto options = make_options(causal, in.mask, 4);
      if (info.projection == kvq::Projection::KVPos) {
        options = F::with_kv_pos_terms(options, in.pos_weight, in.pos_bias, c.n, torch::kFloat64);
      }
      const auto out =
          info.fn(q, in.k, in.v, info.traits.uses_alpha ? in.alpha : torch::Tensor(), options);
      const auto ref = run_oracle(info.name, in, causal, in.mask);
      const double err = max_rel_err(out, ref);
      report("registry fn " + info.name + (causal ? " causal" : "") + " fp64", "relerr", err);
      EXPECT_LE(err, fp64_tolerance(info.name)) << info.name;
    }
  }
}

}  // namespace
}  // namespace kvq_test
