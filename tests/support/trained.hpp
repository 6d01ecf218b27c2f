#pragma once
// A run trained on a grid and every parameter gathered whole, for the MPI tests that compare a
// decomposed run with one rank's (tensor, spatial): equality within a relative tolerance.
#include "support/distributed.hpp"
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/train/trainer.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <string>
#include <vector>

namespace tessera::testing {

struct Trained {
  std::vector<std::vector<float>> parameters;  ///< whole tensors, model order
  std::vector<std::string> names;
  train::RunSummary summary;
};

/// Every parameter of `t` gathered whole, with its name.
inline Trained gathered(train::Trainer& t) {
  Trained r;
  optim::Sgd unused({0.0F, false, 0.0F});  // parameters only: no state needed
  const parallel::StateRegistry reg = t.data_parallel().registry(unused);
  r.parameters = gather_all(reg, parallel::StateKind::parameter, t.grid().trainer());
  for (const parallel::StateEntry& e : reg.entries()) {
    if (e.kind == parallel::StateKind::parameter) {
      r.names.push_back(e.name);
    }
  }
  return r;
}

/// Trains `d` on `comm` and gathers every parameter whole.
inline Trained train_and_gather(const deck::Deck& d, MPI_Comm comm) {
  train::Trainer t(d, comm);
  const train::RunSummary summary = t.run();
  Trained r = gathered(t);
  r.summary = summary;
  return r;
}

/// Every parameter of `a` within `tolerance` (relative to the largest |value|) of `b`'s.
inline void expect_close(const Trained& a, const Trained& b, double tolerance,
                         const std::string& what) {
  ASSERT_EQ(a.parameters.size(), b.parameters.size()) << what;
  for (size_t i = 0; i < a.parameters.size(); ++i) {
    ASSERT_EQ(a.parameters[i].size(), b.parameters[i].size()) << what << ": " << a.names[i];
    EXPECT_LE(relative_difference(a.parameters[i], b.parameters[i]), tolerance)
        << what << ": " << a.names[i] << " at " << world_size() << " ranks";
  }
}

}  // namespace tessera::testing
