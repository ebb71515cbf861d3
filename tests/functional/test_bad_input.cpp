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
    if (info.has_softmax) continue;
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
