#include "tessera/core/init.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/rng.hpp"

namespace tessera {
namespace {
constexpr int kMaxRank = 8;

// Per dimension: local extent of one segment, segment length and this rank's offset inside a
// segment (one segment unless the dimension is split with a stride), and the global row-major
// stride. Local index j of a dimension is global (j / extent) · segment + offset + j % extent.
// At namespace scope: a device lambda may not capture a type local to a function (nvcc).
struct ShardGeometry {
  Index local[kMaxRank];
  Index extent[kMaxRank];
  Index segment[kMaxRank];
  Index offset[kMaxRank];
  Index stride[kMaxRank];
};
}  // namespace

void init_shard(const Tensor& local, const Layout& layout, const GridPlace& place,
                std::uint64_t seed, const std::string& name, const InitSpec& spec) {
  const Shape local_shape = layout.local_shape(place);
  check_shape(local, local_shape,
              fmt::format("init of parameter '{}' ({})", name, layout.to_string()));
  const int rank = layout.rank();
  TESSERA_CHECK(rank <= kMaxRank, "parameter '{}': rank {} exceeds {}", name, rank, kMaxRank);

  ShardGeometry g{};
  const std::vector<Block> blocks = layout.blocks(place);
  Index stride = 1;
  for (int d = rank - 1; d >= 0; --d) {
    const auto du = static_cast<size_t>(d);
    g.local[d] = local_shape[du];
    g.extent[d] = blocks.front().count[du];
    g.offset[d] = blocks.front().global_offset[du];
    // The second segment's block, if any, starts one segment further on.
    g.segment[d] = layout.global_shape()[du] / layout.placement(d).stride;
    g.stride[d] = stride;
    stride *= layout.global_shape()[du];
  }

  const rng::CounterRng gen(seed, rng::hash_name(name));
  const FloatView out = local.view();
  const InitSpec s = spec;
  Kokkos::parallel_for(
      "tessera::init_shard", Kokkos::RangePolicy<ExecSpace>(0, local.numel()),
      KOKKOS_LAMBDA(const Index i) {
        Index rest = i;
        Index global = 0;
        for (int d = rank - 1; d >= 0; --d) {
          const Index local_i = rest % g.local[d];
          rest /= g.local[d];
          const Index seg = g.extent[d] > 0 ? local_i / g.extent[d] : 0;
          const Index in_seg = g.extent[d] > 0 ? local_i % g.extent[d] : 0;
          global += (seg * g.segment[d] + g.offset[d] + in_seg) * g.stride[d];
        }
        const auto counter = static_cast<std::uint64_t>(global);
        switch (s.kind) {
          case InitKind::constant:
            out(i) = s.a;
            break;
          case InitKind::uniform:
            out(i) = s.a + (s.b - s.a) * gen.uniform(counter);
            break;
          case InitKind::normal:
            out(i) = s.a + s.b * gen.normal(counter);
            break;
        }
      });
  Kokkos::fence();
}

}  // namespace tessera
