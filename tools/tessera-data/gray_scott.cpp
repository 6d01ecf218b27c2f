#include "gray_scott.hpp"

#include "tessera/core/rng.hpp"

namespace tessera::data {

GrayScottParameters sample_parameters(std::uint64_t seed, std::int64_t sample, int draw) {
  const rng::CounterRng gen(
      seed, rng::hash_name("gray-scott.parameters") + static_cast<std::uint64_t>(draw));
  const auto i = static_cast<std::uint64_t>(sample);
  return {kFeedLow + kFeedRange * gen.uniform(2 * i),
          kKillLow + kKillRange * gen.uniform(2 * i + 1)};
}

namespace {
// One explicit Euler step (dt = 1) of one cell, from its value and its neighbours' sum.
inline void react(float u, float v, float lap_u, float lap_v, const GrayScottParameters& p,
                  const GrayScottOptions& o, float& u_out, float& v_out) {
  const float uvv = u * v * v;
  u_out = u + o.du * lap_u - uvv + p.feed * (1.0F - u);
  v_out = v + o.dv * lap_v + uvv - (p.feed + p.kill) * v;
}
}  // namespace

std::vector<float> simulate(const comm::CartesianGrid& grid, std::uint64_t seed,
                            std::int64_t sample, const GrayScottParameters& p,
                            const GrayScottOptions& options) {
  const int nd = grid.ndims();
  // Work in 3-D; a 2-D grid is one plane deep (and its z neighbours are itself, unused).
  const Index gz = nd == 3 ? grid.global_extent()[0] : 1;
  const Index gy = grid.global_extent()[static_cast<size_t>(nd - 2)];
  const Index gx = grid.global_extent()[static_cast<size_t>(nd - 1)];
  const Index lz = nd == 3 ? grid.local_extent()[0] : 1;
  const Index ly = grid.local_extent()[static_cast<size_t>(nd - 2)];
  const Index lx = grid.local_extent()[static_cast<size_t>(nd - 1)];
  const Index oz = nd == 3 ? grid.local_offset()[0] : 0;
  const Index oy = grid.local_offset()[static_cast<size_t>(nd - 2)];
  const Index ox = grid.local_offset()[static_cast<size_t>(nd - 1)];
  const Index pz = nd == 3 ? lz + 2 : 1;  // padded extents
  const Index py = ly + 2;
  const Index px = lx + 2;
  const Index zlo = nd == 3 ? 1 : 0;
  auto at = [&](Index z, Index y, Index x) { return static_cast<size_t>((z * py + y) * px + x); };

  std::vector<float> u(static_cast<size_t>(pz * py * px), 1.0F);
  std::vector<float> v(u.size(), 0.0F);
  // Initial state: u = 1, v = 0, with a seeded box (u = 0.5, v = 0.25) at a random place, plus
  // noise, all keyed by the global index.
  const rng::CounterRng place(seed, rng::hash_name("gray-scott.place"));
  const rng::CounterRng noise(
      seed, rng::hash_name("gray-scott.noise") + static_cast<std::uint64_t>(sample));
  const auto s = static_cast<std::uint64_t>(sample);
  const Index cz = static_cast<Index>(place.uniform(3 * s) * static_cast<float>(gz));
  const Index cy = static_cast<Index>(place.uniform(3 * s + 1) * static_cast<float>(gy));
  const Index cx = static_cast<Index>(place.uniform(3 * s + 2) * static_cast<float>(gx));
  const Index half = std::max<Index>(1, std::min({gy, gx, nd == 3 ? gz : gy}) / 8);
  auto periodic_near = [](Index a, Index c, Index n, Index h) {
    const Index d = std::abs(a - c);
    return std::min(d, n - d) <= h;
  };
  for (Index z = 0; z < lz; ++z) {
    for (Index y = 0; y < ly; ++y) {
      for (Index x = 0; x < lx; ++x) {
        const Index g = ((z + oz) * gy + (y + oy)) * gx + (x + ox);
        const size_t i = at(z + zlo, y + 1, x + 1);
        const bool inside = (nd == 2 || periodic_near(z + oz, cz, gz, half)) &&
                            periodic_near(y + oy, cy, gy, half) &&
                            periodic_near(x + ox, cx, gx, half);
        const float r = noise.uniform(static_cast<std::uint64_t>(g)) - 0.5F;
        u[i] = (inside ? 0.5F : 1.0F) + 0.02F * r;
        v[i] = (inside ? 0.25F : 0.0F) + 0.02F * r;
      }
    }
  }
  comm::HaloExchange halo(grid);
  std::vector<float> u2(u.size());
  std::vector<float> v2(v.size());
  const float diag = nd == 3 ? 6.0F : 4.0F;
  for (int step = 0; step < options.steps; ++step) {
    halo.exchange(u);
    halo.exchange(v);
    for (Index z = zlo; z < lz + zlo; ++z) {
      for (Index y = 1; y <= ly; ++y) {
        for (Index x = 1; x <= lx; ++x) {
          const size_t i = at(z, y, x);
          float nu =
              u[at(z, y - 1, x)] + u[at(z, y + 1, x)] + u[at(z, y, x - 1)] + u[at(z, y, x + 1)];
          float nv =
              v[at(z, y - 1, x)] + v[at(z, y + 1, x)] + v[at(z, y, x - 1)] + v[at(z, y, x + 1)];
          if (nd == 3) {
            nu += u[at(z - 1, y, x)] + u[at(z + 1, y, x)];
            nv += v[at(z - 1, y, x)] + v[at(z + 1, y, x)];
          }
          react(u[i], v[i], nu - diag * u[i], nv - diag * v[i], p, options, u2[i], v2[i]);
        }
      }
    }
    std::swap(u, u2);
    std::swap(v, v2);
  }
  std::vector<float> out(static_cast<size_t>(lz * ly * lx));
  size_t k = 0;
  for (Index z = zlo; z < lz + zlo; ++z) {
    for (Index y = 1; y <= ly; ++y) {
      for (Index x = 1; x <= lx; ++x) {
        out[k++] = v[at(z, y, x)];
      }
    }
  }
  return out;
}

}  // namespace tessera::data
