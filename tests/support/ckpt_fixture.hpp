#pragma once
// Small checkpoint files written straight from docs/checkpoint-format.md with the io::hdf5
// wrappers and io::checksum_partial, for the tests of tessera-ckpt (tests/mpi/test_ckpt.cpp) and
// its end-to-end script (tests/e2e/ckpt_fixture.cpp). Tests change the description (drop an
// attribute, a tensor, a checksum…) before writing it to make damaged files on purpose.
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/hdf5.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace tessera::testing {

struct FixtureTensor {
  std::string path;  ///< "/model/linear1/weight"
  std::vector<hsize_t> shape;
  std::vector<float> values;  ///< row-major
  std::string kind;           ///< "parameter" / "buffer" for /model; "" writes no attribute
  std::optional<std::string> checksum;  ///< written as is when set; else computed
  bool write_checksum = true;
  io::ElementType type = io::ElementType::f32;
};

using AttributeValue = std::variant<std::string, std::int64_t, double>;

struct FixtureCheckpoint {
  std::map<std::string, AttributeValue> root;
  std::vector<FixtureTensor> tensors;

  /// The tensor at `path`; throws std::out_of_range when there is none.
  FixtureTensor& tensor(const std::string& path) {
    for (FixtureTensor& t : tensors) {
      if (t.path == path) {
        return t;
      }
    }
    throw std::out_of_range("fixture has no tensor " + path);
  }
  void remove(const std::string& path) {
    for (auto it = tensors.begin(); it != tensors.end(); ++it) {
      if (it->path == path) {
        tensors.erase(it);
        return;
      }
    }
  }
};

inline std::string fixture_deck(const std::string& optimizer, double momentum) {
  std::string deck =
      "# fixture deck\n[run]\nname = \"fixture\"\nseed = 7\n\n[model]\ninput = [3]\nlayers = [\n"
      "  { linear = { out = 4 } }, { relu = {} }, { linear = { out = 2 } },\n]\n\n"
      "[optimizer]\ntype = \"" +
      optimizer + "\"\nlr = 0.1\n";
  if (optimizer == "sgd") {
    deck += "momentum = " + std::to_string(momentum) + "\n";
  }
  return deck;
}

/// A checkpoint of a 3 → 4 → 2 MLP with a norm buffer: linear1.weight (4, 3), linear1.bias (4),
/// linear2.weight (2, 4), linear2.bias (2), norm.running_mean (4) (a buffer), and the optimizer
/// state `optimizer` ("sgd" with momentum > 0: momentum; "adamw": exp_avg, exp_avg_sq) of each
/// parameter. Values are a deterministic function of `seed` and the element index (exp_avg_sq's
/// squared).
inline FixtureCheckpoint make_fixture(std::int64_t seed = 1, const std::string& optimizer = "sgd",
                                      double momentum = 0.9, std::int64_t step = 100) {
  FixtureCheckpoint c;
  struct Param {
    const char* name;
    std::vector<hsize_t> shape;
    const char* kind;
  };
  const Param params[] = {{"linear1.weight", {4, 3}, "parameter"},
                          {"linear1.bias", {4}, "parameter"},
                          {"linear2.weight", {2, 4}, "parameter"},
                          {"linear2.bias", {2}, "parameter"},
                          {"norm.running_mean", {4}, "buffer"}};
  std::vector<std::string> states;
  if (optimizer == "adamw") {
    states = {"exp_avg", "exp_avg_sq"};
  } else if (momentum > 0.0) {
    states = {"momentum"};
  }
  int salt = 0;
  auto values = [&](const std::vector<hsize_t>& shape) {
    std::size_t n = 1;
    for (hsize_t d : shape) {
      n *= d;
    }
    std::vector<float> v(n);
    ++salt;
    for (std::size_t i = 0; i < n; ++i) {
      v[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) +
                                         1.3 * static_cast<double>(salt) +
                                         0.11 * static_cast<double>(seed)));
    }
    return v;
  };
  for (const Param& p : params) {
    c.tensors.push_back({io::model_path(p.name), p.shape, values(p.shape), p.kind, std::nullopt,
                         true, io::ElementType::f32});
  }
  for (const Param& p : params) {
    if (std::string(p.kind) != "parameter") {
      continue;
    }
    for (const std::string& s : states) {
      std::vector<float> v = values(p.shape);
      if (s == "exp_avg_sq") {  // a variance: never negative
        for (float& x : v) {
          x *= x;
        }
      }
      c.tensors.push_back({io::optimizer_path(p.name, s), p.shape, v, "", std::nullopt, true,
                           io::ElementType::f32});
    }
  }
  c.root = {{"format", std::string(io::kCheckpointFormat)},
            {"format_version", io::kCheckpointVersion},
            {"tessera_version", std::string("0.1.0")},
            {"created", std::string("2026-11-27T14:02:11Z")},
            {"step", step},
            {"total_steps", std::int64_t{1000}},
            {"cursor_epoch", std::int64_t{1}},
            {"cursor_batch", std::int64_t{30}},
            {"rng_seed", std::int64_t{7}},
            {"optimizer", optimizer},
            {"optimizer_steps", step},
            {"deck", fixture_deck(optimizer, momentum)},
            {"grid", std::string("trainers 1 × data 2 × pipeline 1 × tensor 1 × spatial [1, 1]")},
            {"ranks", std::int64_t{2}},
            {"data_size", std::int64_t{2}},
            {"zero", std::int64_t{0}},
            {"tensors", static_cast<std::int64_t>(c.tensors.size())}};
  return c;
}

inline std::string fixture_checksum(const std::vector<float>& values) {
  return io::checksum_string(
      io::checksum_partial(values.data(), 0, static_cast<std::int64_t>(values.size())));
}

/// Writes `c` to `path` from this rank alone (contiguous datasets, as the format says).
/// Damages `t` as a bad disk would: its stored checksum stays that of the values as saved, then
/// element `index` becomes `value`. Returns the stored checksum.
inline std::string corrupt(FixtureTensor& t, std::size_t index, float value) {
  t.checksum = fixture_checksum(t.values);
  t.values[index] = value;
  return *t.checksum;
}

inline void write_fixture(const std::string& path, const FixtureCheckpoint& c) {
  io::File f = io::File::create(path, MPI_COMM_SELF);
  {
    const io::Group root = f.root();
    for (const auto& [name, value] : c.root) {
      std::visit([&, n = name](const auto& v) { root.attributes().set(n, v); }, value);
    }
    for (const FixtureTensor& t : c.tensors) {
      const io::Dataset d = root.create_dataset(t.path.substr(1), t.type, t.shape);
      if (!t.values.empty()) {
        d.write({std::vector<hsize_t>(t.shape.size(), 0), t.shape}, io::ElementType::f32,
                t.values.data(), false);
      }
      if (!t.kind.empty()) {
        d.attributes().set("kind", t.kind);
      }
      if (t.write_checksum) {
        d.attributes().set("checksum", t.checksum ? *t.checksum : fixture_checksum(t.values));
      }
    }
  }
  f.close();
}

}  // namespace tessera::testing
