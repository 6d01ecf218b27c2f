#pragma once
// TESSERA_CLONES_AVX512 before a function definition: GCC compiles it twice, for x86-64-v4
// (AVX-512) and for the baseline the library is built for, and picks one when the program loads.
// For the few host loops where AVX-512 pays and whose results do not depend on the vector width
// (integer arithmetic, or element-wise float work compiled without FP contraction). Elsewhere
// (other compilers, other CPUs) it expands to nothing.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TESSERA_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define TESSERA_CLONES_AVX512
#endif
