// Bad input raises c10::Error naming the offending argument, never a crash or a silent result.
#include "test_utils.h"

namespace kvq_test {
namespace {

// Valid inputs: B = 2, H = 3, m = n = 5, d = 4, dv = 2.
struct Good {
  torch::Tensor q = torch::randn({2, 3, 5, 4});
  torch::Tensor k = torch::randn({2, 3, 5, 4});
  torch::Tensor v = torch::randn({2, 3, 5, 2});
  torch::Tensor alpha = torch::ones({3});
  torch::Tensor w = torch::randn({3, 10});
  torch::Tensor b0 = torch::randn({3});
};

// Every functional entry point taking (q, k, v) as a uniform call. kv / kv-pos take no q; their
// q-related checks are skipped.
struct Entry {
  std::string name;
  bool takes_q;
  bool takes_alpha;
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                              const torch::Tensor&, const F::AttentionFuncOptions&)>
      fn;
};

std::vector<Entry> entries() {
  const Good g;
  const auto w = g.w;
  const auto b0 = g.b0;
  return {
      {"softmax_attention", true, false,
       [](auto& q, auto& k, auto& v, auto&, auto& o) { return F::softmax_attention(q, k, v, o); }},
      {"kv_attention", false, false,
       [](auto&, auto& k, auto& v, auto&, auto& o) { return F::kv_attention(k, v, o); }},
      {"kv_pos_attention", false, false,
       [w, b0](auto&, auto& k, auto& v, auto&, auto& o) {
         return F::kv_pos_attention(k, v, w, b0, o);
       }},
      {"linear_attention", true, false,
       [](auto& q, auto& k, auto& v, auto&, auto& o) { return F::linear_attention(q, k, v, o); }},
      {"linear_identity_attention", true, false,
       [](auto& q, auto& k, auto& v, auto&, auto& o) {
         return F::linear_identity_attention(q, k, v, o);
       }},
      {"intention", true, true,
       [](auto& q, auto& k, auto& v, auto& a, auto& o) { return F::intention(q, k, v, a, o); }},
      {"softmax_intention", true, true,
       [](auto& q, auto& k, auto& v, auto& a, auto& o) {
         return F::softmax_intention(q, k, v, a, o);
       }},
      {"kernel_intention", true, true,
       [](auto& q, auto& k, auto& v, auto& a, auto& o) {
         return F::kernel_intention(q, k, v, a, o);
       }},
  };
}

TEST(BadInput, ValidInputsRun) {
  const Good g;
  for (const auto& e : entries()) {
    for (bool causal : {false, true}) {
      const auto out = e.fn(g.q, g.k, g.v, g.alpha, F::AttentionFuncOptions().causal(causal));
      EXPECT_EQ(out.sizes(), torch::IntArrayRef({2, 3, 5, 2})) << e.name;
    }
  }
}

TEST(BadInput, WrongRanks) {
  const Good g;
  const F::AttentionFuncOptions opt;
  for (const auto& e : entries()) {
    if (e.takes_q) {
      expect_error_naming([&] { e.fn(g.q[0], g.k, g.v, g.alpha, opt); }, {"q", "query"},
                          e.name + ": q of rank 3");
      expect_error_naming([&] { e.fn(g.q.unsqueeze(0), g.k, g.v, g.alpha, opt); }, {"q", "query"},
                          e.name + ": q of rank 5");
    }
    expect_error_naming([&] { e.fn(g.q, g.k[0], g.v, g.alpha, opt); }, {"k", "key"},
                        e.name + ": k of rank 3");
    expect_error_naming([&] { e.fn(g.q, g.k, g.v.unsqueeze(0), g.alpha, opt); }, {"v", "value"},
                        e.name + ": v of rank 5");
  }
}

TEST(BadInput, MismatchedShapes) {
  const Good g;
  const F::AttentionFuncOptions opt;
  for (const auto& e : entries()) {
    if (e.takes_q) {
      expect_error_naming(
          [&] {
            e.fn(torch::randn({3, 3, 5, 4}), g.k, g.v, g.alpha, opt);
          },
          {"q", "k", "query", "key"}, e.name + ": batch of q != batch of k");
      expect_error_naming(
          [&] {
            e.fn(torch::randn({2, 2, 5, 4}), g.k, g.v, g.alpha, opt);
          },
          {"q", "k", "query", "key"}, e.name + ": heads of q != heads of k");
      expect_error_naming(
          [&] {
            e.fn(torch::randn({2, 3, 5, 6}), g.k, g.v, g.alpha, opt);
          },
          {"q", "k", "query", "key"}, e.name + ": d of q != d of k");
    }
    expect_error_naming(
        [&] {
          e.fn(g.q, g.k, torch::randn({2, 3, 6, 2}), g.alpha, opt);
        },
        {"v", "k", "value", "key"}, e.name + ": n of v != n of k");
    expect_error_naming(
        [&] {
          e.fn(g.q, g.k, torch::randn({1, 3, 5, 2}), g.alpha, opt);
        },
        {"v", "k", "value", "key"}, e.name + ": batch of v != batch of k");
    expect_error_naming(
        [&] {
          e.fn(g.q, g.k, torch::randn({2, 4, 5, 2}), g.alpha, opt);
        },
        {"v", "k", "value", "key"}, e.name + ": heads of v != heads of k");
  }
}

TEST(BadInput, CausalNeedsEqualLengths) {
  const Good g;
  const auto opt = F::AttentionFuncOptions().causal(true);
  for (const auto& e : entries()) {
    if (!e.takes_q) continue;  // kv / kv-pos are self-attention by construction
    expect_error_naming(
        [&] {
          e.fn(torch::randn({2, 3, 4, 4}), g.k, g.v, g.alpha, opt);
        },
        {"causal"}, e.name + ": causal with m = 4, n = 5");
  }
}

TEST(BadInput, KeyPaddingMask) {
  const Good g;
  for (const auto& e : entries()) {
    for (bool causal : {false, true}) {
      const std::string tag = e.name + (causal ? " causal" : "");
      auto with = [&](const torch::Tensor& mask) {
        return F::AttentionFuncOptions().causal(causal).key_padding_mask(mask);
      };
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({2, 6}, torch::kBool)));
          },
          {"key_padding_mask"}, tag + ": mask (B, n+1)");
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({3, 5}, torch::kBool)));
          },
          {"key_padding_mask"}, tag + ": mask (B+1, n)");
      expect_error_naming(
          [&] { e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({5}, torch::kBool))); },
          {"key_padding_mask"}, tag + ": mask (n)");
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({2, 3, 5}, torch::kBool)));
          },
          {"key_padding_mask"}, tag + ": mask (B, H, n)");
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({2, 5})));
          },
          {"key_padding_mask"}, tag + ": float mask");
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, with(torch::zeros({2, 5}, torch::kLong)));
          },
          {"key_padding_mask"}, tag + ": int64 mask");
    }
  }
}

TEST(BadInput, Alpha) {
  const Good g;
  for (const auto& e : entries()) {
    if (!e.takes_alpha) continue;
    for (bool causal : {false, true}) {
      const std::string tag = e.name + (causal ? " causal" : "");
      const auto opt = F::AttentionFuncOptions().causal(causal);
      auto bad = [&](const torch::Tensor& a, const std::string& what) {
        expect_error_naming([&] { e.fn(g.q, g.k, g.v, a, opt); }, {"alpha"}, tag + ": " + what);
      };
      bad(torch::zeros({}), "alpha = 0 (scalar)");
      bad(torch::full({}, -1.0), "alpha = -1 (scalar)");
      bad(torch::tensor({1.0, 0.0, 1.0}), "alpha per head with a 0");
      bad(torch::tensor({1.0, 2.0, -0.5}), "alpha per head with a negative");
      bad(torch::full({}, std::nan("")), "alpha = NaN");
      bad(torch::ones({4}), "alpha (H+1)");
      bad(torch::ones({1, 3}), "alpha (1, H)");
      bad(torch::ones({2, 3}), "alpha (B, H)");
      bad(torch::Tensor(), "alpha undefined");
    }
  }
}

// A negative chunk length is refused (not a division by zero or an endless loop).
TEST(BadInput, NegativeChunkSize) {
  const Good g;
  for (const auto& e : entries()) {
    for (int64_t chunk : {-1, -4}) {
      expect_error_naming(
          [&] {
            e.fn(g.q, g.k, g.v, g.alpha, F::AttentionFuncOptions().causal(true).chunk_size(chunk));
          },
          {"chunk_size"}, e.name + ": causal with chunk_size " + std::to_string(chunk));
    }
  }
}

TEST(BadInput, KVPosParameters) {
  const Good g;
  const F::AttentionFuncOptions opt;
  expect_error_naming(
      [&] {
        F::kv_pos_attention(g.k, g.v, torch::randn({4, 10}), g.b0, opt);
      },
      {"pos_weight"}, "pos_weight (H+1, p)");
  expect_error_naming(
      [&] {
        F::kv_pos_attention(g.k, g.v, torch::randn({2, 3, 10}), g.b0, opt);
      },
      {"pos_weight"}, "pos_weight of rank 3");
  expect_error_naming([&] { F::kv_pos_attention(g.k, g.v, g.w, torch::randn({4}), opt); },
                      {"pos_bias"}, "pos_bias (H+1)");
  expect_error_naming(
      [&] {
        F::kv_pos_attention(g.k, g.v, g.w, torch::randn({3, 1}), opt);
      },
      {"pos_bias"}, "pos_bias (H, 1)");
}

// ---- The op boundary (issue 13, item 5): what the ops take as it comes. ----

// Inputs in float64 of B = 2, H = 3, m = n = 5, d = 4, dv = 2 (heads as in Good, for kv-pos).
struct Leaves {
  torch::Tensor q, k, v, alpha;
  explicit Leaves(uint64_t seed, int64_t m = 5) {
    torch::manual_seed(seed);
    const auto f64 = torch::dtype(torch::kFloat64);
    q = torch::randn({2, 3, m, 4}, f64);
    k = torch::randn({2, 3, m, 4}, f64);
    v = torch::randn({2, 3, m, 2}, f64);
    alpha = torch::tensor({0.5, 1.0, 2.0}, f64);
  }
};

// Runs every entry on (q, k, v) made from leaves by `view`, and on contiguous copies of the same
// views; outputs and the leaves' gradients must agree. The loss also reduces over the rows, so
// the gradient of the output arrives with row stride 0.
void expect_view_is_handled(
    const std::string& what,
    const std::function<torch::Tensor(const torch::Tensor&, int64_t rows)>& view) {
  const Leaves base(11);
  for (const auto& e : entries()) {
    for (bool causal : {false, true}) {
      for (bool padded : {false, true}) {
        const std::string tag = what + ", " + e.name + (causal ? " causal" : "") +
                                (padded ? " padded" : "");
        auto options = F::AttentionFuncOptions().causal(causal);
        if (padded) options.key_padding_mask(torch::tensor({false, false, false, true, true})
                                                 .view({1, 5})
                                                 .expand({2, 5}));  // expanded too
        std::vector<torch::Tensor> out, grads;
        for (bool copy : {false, true}) {
          std::vector<torch::Tensor> leaves;
          for (const auto& t : {base.q, base.k, base.v}) {
            leaves.push_back(t.clone().requires_grad_(true));
          }
          std::vector<torch::Tensor> in;
          for (const auto& l : leaves) {
            auto x = view(l, l.size(2));
            in.push_back(copy ? x.clone(at::MemoryFormat::Contiguous) : x);
          }
          const auto o = e.fn(in[0], in[1], in[2], base.alpha, options);
          const auto w = torch::linspace(0.5, 1.5, o.size(3), torch::kFloat64);
          ((o.sum(2) * w).sum() + o.pow(2).sum()).backward();
          out.push_back(o.detach());
          for (const auto& l : leaves) {
            grads.push_back(l.grad().defined() ? l.grad() : torch::zeros_like(l));
          }
        }
        // Relative to the larger of 1 and the reference's size: some gradients are zero by the
        // math (linear attention over identical keys and values ignores q and k).
        const auto err = [](const torch::Tensor& a, const torch::Tensor& b) {
          return (a - b).abs().max().item<double>() / std::max(1.0, b.abs().max().item<double>());
        };
        EXPECT_LE(err(out[0], out[1]), 1e-12) << tag;
        for (size_t i = 0; i < 3; ++i) {
          EXPECT_LE(err(grads[i], grads[i + 3]), 1e-12) << tag << ", gradient " << i;
        }
      }
    }
  }
}

TEST(BadInput, NonContiguousInputsAreHandled) {
  // (B, T, H, d) memory seen as (B, H, T, d), as after a projection and a split into heads.
  expect_view_is_handled("permuted", [](const torch::Tensor& x, int64_t) {
    return x.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
  });
  // The last dimension strided.
  expect_view_is_handled("transposed", [](const torch::Tensor& x, int64_t) {
    return x.transpose(-2, -1).contiguous().transpose(-2, -1);
  });
  // Every other row of a longer tensor.
  expect_view_is_handled("row-strided", [](const torch::Tensor& x, int64_t rows) {
    return torch::cat({x, x}, 2).view({x.size(0), x.size(1), rows, 2, x.size(3)}).select(3, 0);
  });
}

TEST(BadInput, ExpandedInputsAreHandled) {
  // Stride 0 over the batch, over the heads, and over the rows (one row repeated: every key
  // the same, still a definite system with alpha > 0).
  expect_view_is_handled("expanded over B", [](const torch::Tensor& x, int64_t) {
    return x.narrow(0, 0, 1).expand_as(x);
  });
  expect_view_is_handled("expanded over H", [](const torch::Tensor& x, int64_t) {
    return x.narrow(1, 0, 1).expand_as(x);
  });
  expect_view_is_handled("expanded over rows", [](const torch::Tensor& x, int64_t) {
    return x.narrow(2, 0, 1).expand_as(x);
  });
}

TEST(BadInput, TensorsOnAnotherDeviceAreRefusedByName) {
  // The meta device stands in for a second device on a machine without one.
  const Good g;
  const auto meta = torch::TensorOptions().device(torch::kMeta);
  const F::AttentionFuncOptions opt;
  for (const auto& e : entries()) {
    expect_error_naming([&] { e.fn(g.q, g.k.to(meta), g.v, g.alpha, opt); }, {"device"},
                        e.name + ": k on meta");
    expect_error_naming([&] { e.fn(g.q, g.k, g.v.to(meta), g.alpha, opt); }, {"device"},
                        e.name + ": v on meta");
    expect_error_naming(
        [&] {
          e.fn(g.q, g.k, g.v, g.alpha,
               F::AttentionFuncOptions().key_padding_mask(
                   torch::zeros({2, 5}, meta.dtype(torch::kBool))));
        },
        {"key_padding_mask"}, e.name + ": mask on meta");
    if (e.takes_alpha) {
      expect_error_naming([&] { e.fn(g.q, g.k, g.v, g.alpha.to(meta), opt); }, {"alpha"},
                          e.name + ": alpha on meta");
    }
  }
  expect_error_naming([&] { F::kv_pos_attention(g.k, g.v, g.w.to(meta), g.b0, opt); },
                      {"pos_weight"}, "kv_pos: pos_weight on meta");
}

TEST(BadInput, IntegerAndMismatchedDtypesAreRefusedByName) {
  const Good g;
  const F::AttentionFuncOptions opt;
  for (const auto& e : entries()) {
    const auto i64 = [](const torch::Tensor& t) { return (t * 10).to(torch::kLong); };
    if (e.takes_q) {
      expect_error_naming([&] { e.fn(i64(g.q), g.k, g.v, g.alpha, opt); }, {"q"},
                          e.name + ": integer q");
      expect_error_naming([&] { e.fn(g.q.to(torch::kFloat64), g.k, g.v, g.alpha, opt); },
                          {"dtype"}, e.name + ": float64 q, float32 k and v");
    }
    expect_error_naming([&] { e.fn(g.q, i64(g.k), g.v, g.alpha, opt); }, {"k"},
                        e.name + ": integer k");
    expect_error_naming([&] { e.fn(g.q, g.k, g.v.to(torch::kInt), g.alpha, opt); }, {"v"},
                        e.name + ": integer v");
    expect_error_naming([&] { e.fn(g.q, g.k, g.v.to(torch::kFloat64), g.alpha, opt); },
                        {"dtype"}, e.name + ": float64 v, float32 q and k");
    if (e.takes_alpha) {
      expect_error_naming([&] { e.fn(g.q, g.k, g.v, torch::ones({3}, torch::kLong), opt); },
                          {"alpha"}, e.name + ": integer alpha");
      // A float64 alpha with float32 inputs is fine: it is cast.
      const auto out = e.fn(g.q, g.k, g.v, g.alpha.to(torch::kFloat64), opt);
      EXPECT_EQ(out.scalar_type(), torch::kFloat32) << e.name;
      EXPECT_TRUE(torch::equal(out, e.fn(g.q, g.k, g.v, g.alpha, opt))) << e.name;
    }
  }
  // Integer kv-pos parameters are cast like alpha.
  const auto w = (g.w * 4).round();
  EXPECT_TRUE(torch::equal(F::kv_pos_attention(g.k, g.v, w.to(torch::kInt), g.b0, opt),
                           F::kv_pos_attention(g.k, g.v, w, g.b0, opt)));
}

TEST(BadInput, MaskThatRequiresGradIsRefusedByName) {
  // A bool tensor cannot require gradients; a float "mask" that does is refused as not bool.
  const Good g;
  const auto mask = torch::zeros({2, 5}, torch::requires_grad());
  for (const auto& e : entries()) {
    expect_error_naming(
        [&] { e.fn(g.q, g.k, g.v, g.alpha, F::AttentionFuncOptions().key_padding_mask(mask)); },
        {"key_padding_mask"}, e.name + ": float mask with requires_grad");
  }
}

// Where the math says NaN, the output is NaN; elsewhere it is finite. NaN at query row t of
// (b, h) = (0, 1): only that output row. NaN at key / value row s: every row of (0, 1) that sees
// s (all rows, or rows >= s when causal), no other (b, h). NaN or infinity at a padded key or
// value: nowhere. An infinity behaves like NaN or saturates; it never crashes or hangs.
TEST(BadInput, NanAndInfInputsGiveNanWhereTheMathSays) {
  const int64_t row = 2;
  for (const auto& e : entries()) {
    for (bool causal : {false, true}) {
      for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
        const std::string tag =
            e.name + (causal ? " causal" : "") + (std::isnan(bad) ? " NaN" : " Inf");
        const auto opt = F::AttentionFuncOptions().causal(causal);
        const auto run = [&](const char* which, const F::AttentionFuncOptions& o) {
          Leaves in(5);
          torch::NoGradGuard no_grad;
          auto& t = std::string(which) == "q" ? in.q : std::string(which) == "k" ? in.k : in.v;
          t[0][1][std::string(which) == "q" ? row : 3][0] = bad;
          return e.fn(in.q, in.k, in.v, in.alpha, o);
        };
        // Not finite exactly at `expected` (a (B, H, m) bool map) and finite elsewhere.
        const auto expect_pattern = [&](const torch::Tensor& out, const torch::Tensor& expected,
                                         const std::string& what, bool exact) {
          const auto bad_rows = out.isfinite().logical_not().any(-1);
          if (!std::isnan(bad)) {
            // An infinity may be a limit the math gives a value (an infinite kernel entry drops
            // its key) or NaN; either way nothing outside its (b, h) changes.
            auto others = bad_rows.clone();
            others[0][1].zero_();
            EXPECT_FALSE(others.any().item<bool>()) << tag << ", " << what << "\n" << bad_rows;
          } else if (exact) {
            EXPECT_TRUE(torch::equal(bad_rows, expected))
                << tag << ", " << what << ": non-finite rows\n"
                << bad_rows << "\nexpected\n"
                << expected;
          } else {
            // At least where the math says, and never outside its (b, h) = (0, 1).
            EXPECT_TRUE(bad_rows.logical_or(expected.logical_not()).all().item<bool>())
                << tag << ", " << what << "\n" << bad_rows;
            auto others = bad_rows.clone();
            others[0][1].zero_();
            EXPECT_FALSE(others.any().item<bool>()) << tag << ", " << what << "\n" << bad_rows;
          }
        };
        auto none = torch::zeros({2, 3, 5}, torch::kBool);
        if (e.takes_q && std::isnan(bad)) {
          auto expected = none.clone();
          expected[0][1][row] = true;
          expect_pattern(run("q", opt), expected, "NaN in q", true);
        }
        // Key / value row 3 of (0, 1).
        auto sees = none.clone();
        for (int64_t t = causal ? 3 : 0; t < 5; ++t) sees[0][1][t] = true;
        for (const char* which : {"k", "v"}) {
          // kv / kv-pos use k as the queries: a bad key row is also a bad query row.
          if (!e.takes_q && std::string(which) == "k") sees[0][1][3] = true;
          torch::Tensor out;
          try {
            out = run(which, opt);
          } catch (const c10::Error& err) {
            // Where the Cholesky check sees a bad key before the factorisation turns it into
            // NaN (reference LAPACK, other devices), a least-squares solve reports the system.
            EXPECT_TRUE(e.takes_alpha && std::string(which) == "k") << tag << ": " << err.what();
            EXPECT_TRUE(std::string(err.what_without_backtrace())
                            .find("not numerically positive definite") != std::string::npos)
                << tag << ": " << err.what_without_backtrace();
            continue;
          }
          // A bad value meets weight 0 in the masked part of a causal tile (0 * NaN): rows before
          // s may turn NaN in the same (b, h), never elsewhere.
          expect_pattern(out, sees, std::string("bad ") + which,
                         !causal && std::isnan(bad));
        }
        // Padded: key and value row 3 of every batch element are padding and hold `bad`.
        const auto mask =
            torch::tensor({false, false, false, true, false}).view({1, 5}).expand({2, 5});
        Leaves in(6);
        in.k.select(2, 3).fill_(bad);
        in.v.select(2, 3).fill_(bad);
        const auto padded = e.fn(in.q, in.k, in.v, in.alpha,
                                 F::AttentionFuncOptions().causal(causal).key_padding_mask(mask));
        if (e.takes_q) {
          EXPECT_TRUE(padded.isfinite().all().item<bool>()) << tag << ": padded bad key leaked\n"
                                                           << padded;
        } else {
          // kv / kv-pos: the padded key is still query row 3; only that row may be bad.
          auto finite_rows = padded.isfinite().all(-1);
          finite_rows.select(2, 3).fill_(true);
          EXPECT_TRUE(finite_rows.all().item<bool>()) << tag << ": padded bad key leaked";
        }
      }
    }
  }
}

// A score bias entry of -inf masks its score (the result equals padding that key); NaN or +inf
// poisons the rows that see it (a NaN kv-pos bias of head 1: every row of head 1).
TEST(BadInput, ScoreBiasMinusInfMasksAndNanPoisons) {
  const Leaves in(7);
  for (bool causal : {false, true}) {
    auto bias = torch::zeros({1, 5}, torch::kFloat64);
    bias[0][1] = -std::numeric_limits<double>::infinity();
    const auto masked = F::softmax_attention(
        in.q, in.k, in.v, F::AttentionFuncOptions().causal(causal).score_bias(bias));
    const auto padded = F::softmax_attention(
        in.q, in.k, in.v,
        F::AttentionFuncOptions().causal(causal).key_padding_mask(
            torch::tensor({false, true, false, false, false}).view({1, 5}).expand({2, 5})));
    EXPECT_LE(max_rel_err(masked, padded), 1e-12) << "causal " << causal;

    const Good g;
    auto b0 = g.b0.clone();
    b0[1] = std::nan("");
    const auto out =
        F::kv_pos_attention(g.k, g.v, g.w, b0, F::AttentionFuncOptions().causal(causal));
    const auto bad = out.isfinite().all(-1).logical_not();  // (B, H, n)
    auto expected = torch::zeros_like(bad);
    expected.select(1, 1).fill_(true);
    EXPECT_TRUE(torch::equal(bad, expected)) << "causal " << causal << "\n" << bad;
  }
}

TEST(BadInput, ZeroLengthSequencesAreHandled) {
  const auto f64 = torch::dtype(torch::kFloat64);
  struct Case {
    std::string what;
    std::vector<int64_t> q, kv;  // q (B, H, m), k and v (B, H, n)
    bool causal;
  };
  const std::vector<Case> cases = {{"m = 0", {2, 3, 0}, {2, 3, 5}, false},
                                   {"n = 0", {2, 3, 4}, {2, 3, 0}, false},
                                   {"T = 0", {2, 3, 0}, {2, 3, 0}, false},
                                   {"T = 0 causal", {2, 3, 0}, {2, 3, 0}, true},
                                   {"B = 0", {0, 3, 5}, {0, 3, 5}, true},
                                   {"H = 0", {2, 0, 5}, {2, 0, 5}, true}};
  for (const auto& e : entries()) {
    for (const auto& c : cases) {
      if (!e.takes_q && c.q[2] != c.kv[2]) continue;  // kv: the keys are the queries
      if (e.name == "kv_pos_attention" && c.q[1] == 0) continue;  // its weights have H = 3
      const std::string tag = e.name + ", " + c.what;
      auto q = torch::randn({c.q[0], c.q[1], c.q[2], 4}, f64).requires_grad_();
      auto k = torch::randn({c.kv[0], c.kv[1], c.kv[2], 4}, f64).requires_grad_();
      auto v = torch::randn({c.kv[0], c.kv[1], c.kv[2], 2}, f64).requires_grad_();
      auto alpha = torch::ones({c.q[1]}, f64);
      if (c.q[1] == 0) alpha = torch::ones({}, f64);
      auto options = F::AttentionFuncOptions().causal(c.causal).key_padding_mask(
          torch::zeros({c.kv[0], c.kv[2]}, torch::kBool));
      torch::Tensor out;
      try {
        out = e.fn(q, k, v, alpha, options);
        out.pow(2).sum().backward();
      } catch (const c10::Error& err) {
        ADD_FAILURE() << tag << ": " << err.what_without_backtrace();
        continue;
      }
      const int64_t m = e.takes_q ? c.q[2] : c.kv[2];
      EXPECT_EQ(out.sizes(), torch::IntArrayRef({c.q[0], c.q[1], m, 2})) << tag;
      // No keys: every query gets the zero output of a fully masked row.
      EXPECT_TRUE(torch::equal(out, torch::zeros_like(out)) || c.kv[2] > 0) << tag << "\n" << out;
      EXPECT_TRUE(out.isfinite().all().item<bool>()) << tag;
    }
  }
}

// Sizes whose products pass 2^31: T = 65536 keys make T * T = 2^32 scores. The mechanisms that
// never form T x T index in 64 bits and agree with closed forms at d = dv = 1; kernel intention,
// whose LAPACK system would have T^2 entries, is refused by name before allocating anything.
TEST(BadInput, SizesPast32BitIndices) {
  const int64_t T = 65536;
  const auto f64 = torch::dtype(torch::kFloat64);
  const auto q = torch::rand({1, 1, T, 1}, f64) + 0.5, k = torch::rand({1, 1, T, 1}, f64) + 0.5,
             v = torch::randn({1, 1, T, 1}, f64);
  const auto alpha = torch::full({}, 0.7, f64);
  const auto kv = (k * v).cumsum(2), kk = (k * k).cumsum(2);
  for (bool causal : {false, true}) {
    const auto opt = F::AttentionFuncOptions().causal(causal);
    const auto sum_kv = causal ? kv : kv.narrow(2, T - 1, 1).expand_as(kv);
    const auto sum_kk = causal ? kk : kk.narrow(2, T - 1, 1).expand_as(kk);
    EXPECT_LE(max_rel_err(F::linear_identity_attention(q, k, v, opt), q * sum_kv), 1e-12)
        << "linear_identity causal " << causal;
    EXPECT_LE(max_rel_err(F::intention(q, k, v, alpha, opt), q * sum_kv / (sum_kk + 0.7)), 1e-10)
        << "intention causal " << causal;
  }
  const auto big = torch::zeros({1, 1, 1, 1}).expand({1, 1, 46341, 1});
  expect_error_naming([&] { F::kernel_intention(big, big, big, torch::ones({})); },
                      {"kernel_intention"}, "kernel intention with 46341 keys");
  // 46340^2 < 2^31 is not refused for its size (it fails later, allocating; not run).
}

TEST(BadInput, UnknownMechanismListsValidNames) {
  try {
    kvq::find_mechanism("no-such-mechanism");
    ADD_FAILURE() << "find_mechanism accepted an unknown name";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("no-such-mechanism"), std::string::npos) << msg;
    for (const auto& name : kvq::mechanism_names()) {
      EXPECT_TRUE(mentions(msg, name)) << "missing '" << name << "' in: " << msg;
    }
  }
}

TEST(BadInput, UnknownProjectionListsValidNames) {
  try {
    kvq::parse_projection("qk");
    ADD_FAILURE() << "parse_projection accepted 'qk'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const char* name : {"qkv", "kv", "kv-pos"}) {
      EXPECT_TRUE(mentions(msg, name)) << "missing '" << name << "' in: " << msg;
    }
  }
}

// The 2D positional term lives in the softmax scores: kv-pos with a mechanism without a softmax
// is refused (at construction or at the latest at the first forward).
TEST(BadInput, KVPosProjectionNeedsASoftmaxMechanism) {
  for (const auto& info : kvq::mechanisms()) {
    if (info.traits.has_softmax) continue;
    expect_error_naming(
        [&] {
          kvq::nn::MultiHeadKVQ layer(
              kvq::nn::MultiHeadKVQOptions(8, 2).mechanism(info.name).projection("kv-pos"));
          const auto x = torch::randn({2, 5, 8});
          layer->forward_self(x);
        },
        {"kv-pos", "softmax", info.name.c_str()}, "kv-pos with " + info.name);
  }
}

}  // namespace
}  // namespace kvq_test
