// One step of 8-bit blockwise Adam on CPU, in one pass over each block.
//
// The XLA program of adam_jax.transforms.adam8bit reads every block four times (block
// maxima of the new moments, one encoding per moment, the update), decoding the
// 8-bit codes in each reader. This kernel does the same arithmetic block by
// block while the block sits in L1: decode both moments once, update them,
// take their absolute maxima, write the update, encode both moments. It is the
// same computation as adam_jax.transforms.adam8bit._adam8bit_blocks (see there for the
// math and the dynamic map) up to float32 rounding.
//
// Inputs : g f32[R, B], codes_m u8[R, B], codes_v u8[R, B], scale_m f32[R],
//          scale_v f32[R], table_m f32[256], table_v f32[256], coef f32[9]
// Outputs: u f32[R, B], codes_m u8[R, B], codes_v u8[R, B], scale_m f32[R],
//          scale_v f32[R]  (codes and scales may alias the inputs: each block is
//          read whole before it is written)
// coef   : b1, 1 - b1, b2, 1 - b2, a_m, a_g, 1 / bc2, eps, eps_root: the first
//          moment used by the update is a_m * m + a_g * g (a_g = 0: plain Adam).
// Attribute nesterov selects whether a_g * g is added.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kF32Max = 3.4028234663852886e38f;
constexpr float kRounder = 8388608.0f;  // 2**23

inline int32_t AsInt(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
}

inline float AsFloat(int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
}

// The code of the map value nearest to y in [0, 1]: the arithmetic of
// adam_jax._blockwise.encode_magnitude (three halvings of the decade range,
// 2**b from its exponent bits, round(2**b (z + 0.8) / 0.9 - 1)).
template <int kBits, bool kNonzero>
inline int32_t EncodeMagnitude(float y) {
  // Written without branches, so that the compiler vectorises the loop.
  y = (y <= 1.0f) ? y : 1.0f;  // NaN, infinity or rounding above 1: the top code
  float z = y;
  int32_t shift = 0;
  const bool below4 = z <= 1e-4f;
  z = below4 ? z * 1e4f : z;
  shift += below4 ? (4 << 23) : 0;
  const bool below2 = z <= 1e-2f;
  z = below2 ? z * 1e2f : z;
  shift += below2 ? (2 << 23) : 0;
  const bool below1 = z <= 1e-1f;
  z = below1 ? z * 1e1f : z;
  shift += below1 ? (1 << 23) : 0;
  const float pow2b = AsFloat(((127 + kBits - 1) << 23) - shift);
  const float t = (z * (1.0f / 0.9f) + (0.8f / 0.9f)) * pow2b;
  int32_t code = AsInt(t + (kRounder - 1.0f)) & ((1 << kBits) - 1);
  constexpr float kLowest = kBits == 7 ? 1e-6f : 1e-7f;
  if constexpr (kNonzero) {
    code = std::max(code, static_cast<int32_t>(y > 0.0f));
  } else {
    code = (y <= kLowest) ? static_cast<int32_t>(y >= 0.5f * kLowest) : code;
  }
  return code;
}

// (scale, pre, inv) of a block: adam_jax._blockwise.block_factors.
struct Factors {
  float scale, pre, inv;
};

inline Factors BlockFactors(float absmax) {
  Factors f;
  f.scale = std::isnan(absmax) ? absmax : std::min(absmax, kF32Max);
  f.pre = f.scale > 0x1p100f ? 0x1p-64f : 1.0f;
  const float safe = f.scale > 0.0f ? f.scale * f.pre : 1.0f;
  f.inv = f.scale > 0.0f ? 1.0f / safe : 0.0f;
  return f;
}

struct Step {
  const float* g;
  const uint8_t* codes_m;
  const uint8_t* codes_v;
  const float* scale_m;
  const float* scale_v;
  const float* table_m;
  const float* table_v;
  float* u;
  uint8_t* out_m;
  uint8_t* out_v;
  float* out_scale_m;
  float* out_scale_v;
  int64_t block;
  float b1, one_minus_b1, b2, one_minus_b2, a_m, a_g, inv_bc2, eps, eps_root;
  bool nesterov;

  // Blocks [begin, end), with scratch for two moments of one block.
  void Run(int64_t begin, int64_t end, float* m, float* v) const {
    // Locals, not members, in the loops: a byte store may alias any member, which
    // would keep the compiler from counting iterations and vectorising.
    const int64_t block = this->block;
    const float b1 = this->b1, b2 = this->b2;
#if defined(__AVX512F__)
    const Avx512Tables tables(table_m, table_v);
    const int64_t vec_end = block - block % 16;
#else
    const int64_t vec_end = 0;
#endif
    for (int64_t r = begin; r < end; ++r) {
      const int64_t off = r * block;
      const float km = scale_m[r] * b1;
      const float kv = scale_v[r] * b2;
      // Moments, update and block maxima (as int32 maxima of the non-negative
      // bit patterns: a NaN, whose pattern is above every number's, wins, as in
      // the XLA program).
      int32_t m_max = 0, v_max = 0;
#if defined(__AVX512F__)
      if (vec_end > 0) {
        MomentsAvx512(tables, off, vec_end, km, kv, m, v, &m_max, &v_max);
      }
#endif
      MomentsScalar(off, vec_end, block, km, kv, m, v, &m_max, &v_max);
      const Factors fm = BlockFactors(AsFloat(m_max));
      const Factors fv = BlockFactors(AsFloat(v_max));
#if defined(__AVX512F__)
      if (vec_end > 0) EncodeAvx512(fm, fv, off, vec_end, m, v);
#endif
      EncodeScalar(fm, fv, off, vec_end, block, m, v);
      out_scale_m[r] = fm.scale;
      out_scale_v[r] = fv.scale;
    }
  }

  // Elements [lo, hi) of the block at `off`, in separate loops so that the
  // compiler vectorises all but the table lookups.
  void MomentsScalar(int64_t off, int64_t lo, int64_t hi, float km, float kv, float* m, float* v,
                     int32_t* m_max, int32_t* v_max) const {
    const float one_minus_b1 = this->one_minus_b1, one_minus_b2 = this->one_minus_b2;
    const float a_m = this->a_m, a_g = this->a_g, inv_bc2 = this->inv_bc2;
    const float eps = this->eps, eps_root = this->eps_root;
    const float* gr = g + off;
    const uint8_t* cm = codes_m + off;
    const uint8_t* cv = codes_v + off;
    const float* tm = table_m;
    const float* tv = table_v;
    float* ur = u + off;
    for (int64_t i = lo; i < hi; ++i) {
      m[i] = tm[cm[i]];
      v[i] = tv[cv[i]];
    }
    int32_t mx = *m_max, vx = *v_max;
    for (int64_t i = lo; i < hi; ++i) {
      const float gi = gr[i];
      const float mi = m[i] * km + gi * one_minus_b1;
      const float vi = v[i] * kv + (gi * gi) * one_minus_b2;
      m[i] = mi;
      v[i] = vi;
      mx = std::max(mx, AsInt(mi) & 0x7fffffff);
      vx = std::max(vx, AsInt(vi) & 0x7fffffff);
    }
    *m_max = mx;
    *v_max = vx;
    if (nesterov) {
      for (int64_t i = lo; i < hi; ++i) {
        ur[i] = (a_m * m[i] + a_g * gr[i]) / (std::sqrt(v[i] * inv_bc2 + eps_root) + eps);
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        ur[i] = (a_m * m[i]) / (std::sqrt(v[i] * inv_bc2 + eps_root) + eps);
      }
    }
  }

  void EncodeScalar(const Factors& fm, const Factors& fv, int64_t off, int64_t lo, int64_t hi,
                    const float* m, const float* v) const {
    const float pre_m = fm.pre, inv_m = fm.inv, pre_v = fv.pre, inv_v = fv.inv;
    uint8_t* om = out_m + off;
    uint8_t* ov = out_v + off;
    for (int64_t i = lo; i < hi; ++i) {
      const float x = m[i] * pre_m;
      int32_t code = EncodeMagnitude<7, false>(std::fabs(x) * inv_m);
      code += x < 0.0f ? 128 : 0;
      om[i] = static_cast<uint8_t>(code);
    }
    for (int64_t i = lo; i < hi; ++i) {
      ov[i] = static_cast<uint8_t>(EncodeMagnitude<8, true>((v[i] * pre_v) * inv_v));
    }
  }

#if defined(__AVX512F__)
  // Both 256-entry tables in 16 registers each: a lookup is eight two-register
  // permutes (32 entries each) and seven blends on the index's top three bits.
  struct Avx512Tables {
    __m512 m[16], v[16];
    Avx512Tables(const float* tm, const float* tv) {
      for (int i = 0; i < 16; ++i) {
        m[i] = _mm512_loadu_ps(tm + 16 * i);
        v[i] = _mm512_loadu_ps(tv + 16 * i);
      }
    }
  };

  static inline __m512 Lookup(const __m512* t, __m512i idx) {
    __m512 a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm512_permutex2var_ps(t[2 * j], idx, t[2 * j + 1]);
    const __mmask16 bit5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const __mmask16 bit6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __mmask16 bit7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    const __m512 b0 = _mm512_mask_blend_ps(bit5, a[0], a[1]);
    const __m512 b1 = _mm512_mask_blend_ps(bit5, a[2], a[3]);
    const __m512 b2 = _mm512_mask_blend_ps(bit5, a[4], a[5]);
    const __m512 b3 = _mm512_mask_blend_ps(bit5, a[6], a[7]);
    const __m512 c0 = _mm512_mask_blend_ps(bit6, b0, b1);
    const __m512 c1 = _mm512_mask_blend_ps(bit6, b2, b3);
    return _mm512_mask_blend_ps(bit7, c0, c1);
  }

  void MomentsAvx512(const Avx512Tables& t, int64_t off, int64_t hi, float km, float kv,
                     float* m, float* v, int32_t* m_max, int32_t* v_max) const {
    const __m512 vkm = _mm512_set1_ps(km), vkv = _mm512_set1_ps(kv);
    const __m512 omb1 = _mm512_set1_ps(one_minus_b1), omb2 = _mm512_set1_ps(one_minus_b2);
    const __m512 am = _mm512_set1_ps(a_m), ag = _mm512_set1_ps(a_g);
    const __m512 ibc2 = _mm512_set1_ps(inv_bc2), veps = _mm512_set1_ps(eps);
    const __m512 veps_root = _mm512_set1_ps(eps_root);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    __m512i mx = _mm512_setzero_si512(), vx = _mm512_setzero_si512();
    for (int64_t i = 0; i < hi; i += 16) {
      const __m512 gi = _mm512_loadu_ps(g + off + i);
      const __m512i cm = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes_m + off + i)));
      const __m512i cv = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes_v + off + i)));
      const __m512 mi = _mm512_add_ps(_mm512_mul_ps(Lookup(t.m, cm), vkm),
                                      _mm512_mul_ps(gi, omb1));
      const __m512 vi = _mm512_add_ps(_mm512_mul_ps(Lookup(t.v, cv), vkv),
                                      _mm512_mul_ps(_mm512_mul_ps(gi, gi), omb2));
      _mm512_storeu_ps(m + i, mi);
      _mm512_storeu_ps(v + i, vi);
      mx = _mm512_max_epi32(mx, _mm512_and_si512(_mm512_castps_si512(mi), abs_mask));
      vx = _mm512_max_epi32(vx, _mm512_and_si512(_mm512_castps_si512(vi), abs_mask));
      __m512 mh = _mm512_mul_ps(am, mi);
      if (nesterov) mh = _mm512_add_ps(mh, _mm512_mul_ps(ag, gi));
      const __m512 denom = _mm512_add_ps(
          _mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(vi, ibc2), veps_root)), veps);
      _mm512_storeu_ps(u + off + i, _mm512_div_ps(mh, denom));
    }
    *m_max = _mm512_reduce_max_epi32(mx);
    *v_max = _mm512_reduce_max_epi32(vx);
  }

  template <int kBits, bool kNonzero>
  static inline __m512i EncodeMagnitude16(__m512 y) {
    // EncodeMagnitude on 16 lanes. min returns its second operand for a NaN.
    y = _mm512_min_ps(y, _mm512_set1_ps(1.0f));
    __m512 z = y;
    __m512i shift = _mm512_setzero_si512();
    const float thresholds[3] = {1e-4f, 1e-2f, 1e-1f}, powers[3] = {1e4f, 1e2f, 1e1f};
    const int32_t steps[3] = {4 << 23, 2 << 23, 1 << 23};
    for (int j = 0; j < 3; ++j) {
      const __mmask16 below = _mm512_cmp_ps_mask(z, _mm512_set1_ps(thresholds[j]), _CMP_LE_OQ);
      z = _mm512_mask_mul_ps(z, below, z, _mm512_set1_ps(powers[j]));
      shift = _mm512_mask_add_epi32(shift, below, shift, _mm512_set1_epi32(steps[j]));
    }
    const __m512 pow2b = _mm512_castsi512_ps(
        _mm512_sub_epi32(_mm512_set1_epi32((127 + kBits - 1) << 23), shift));
    const __m512 t = _mm512_mul_ps(
        _mm512_add_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.0f / 0.9f)), _mm512_set1_ps(0.8f / 0.9f)),
        pow2b);
    __m512i code = _mm512_and_si512(
        _mm512_castps_si512(_mm512_add_ps(t, _mm512_set1_ps(kRounder - 1.0f))),
        _mm512_set1_epi32((1 << kBits) - 1));
    constexpr float kLowest = kBits == 7 ? 1e-6f : 1e-7f;
    const __m512i one = _mm512_set1_epi32(1);
    if constexpr (kNonzero) {
      const __mmask16 positive = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);
      code = _mm512_mask_max_epi32(code, positive, code, one);
    } else {
      const __mmask16 low = _mm512_cmp_ps_mask(y, _mm512_set1_ps(kLowest), _CMP_LE_OQ);
      const __mmask16 half = _mm512_cmp_ps_mask(y, _mm512_set1_ps(0.5f * kLowest), _CMP_GE_OQ);
      code = _mm512_mask_mov_epi32(code, low, _mm512_maskz_mov_epi32(half, one));
    }
    return code;
  }

  void EncodeAvx512(const Factors& fm, const Factors& fv, int64_t off, int64_t hi,
                    const float* m, const float* v) const {
    const __m512 pre_m = _mm512_set1_ps(fm.pre), inv_m = _mm512_set1_ps(fm.inv);
    const __m512 pre_v = _mm512_set1_ps(fv.pre), inv_v = _mm512_set1_ps(fv.inv);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t i = 0; i < hi; i += 16) {
      const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(m + i), pre_m);
      const __m512 ax = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), abs_mask));
      __m512i cm = EncodeMagnitude16<7, false>(_mm512_mul_ps(ax, inv_m));
      const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
      cm = _mm512_mask_add_epi32(cm, negative, cm, _mm512_set1_epi32(128));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out_m + off + i), _mm512_cvtepi32_epi8(cm));
      const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), pre_v), inv_v);
      const __m512i cv = EncodeMagnitude16<8, true>(y);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out_v + off + i), _mm512_cvtepi32_epi8(cv));
    }
  }
#endif
};

// Blocks are handed out in chunks from a shared counter to the calling thread
// and to tasks on XLA's intra-op thread pool. The caller waits only for chunks
// a task has already claimed (never for a task still queued), so the step
// cannot deadlock when every pool thread is itself busy; a task that starts
// after the last chunk was claimed finds nothing to do and only touches the
// shared counters, which it keeps alive.
struct Work {
  Step step;
  int64_t rows = 0;
  int64_t chunk = 0;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    std::vector<float> scratch(2 * step.block);
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const int64_t begin = c * chunk;
      step.Run(begin, std::min(rows, begin + chunk), scratch.data(),
               scratch.data() + step.block);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Adam8bitStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                            ffi::Buffer<ffi::U8> codes_m, ffi::Buffer<ffi::U8> codes_v,
                            ffi::Buffer<ffi::F32> scale_m, ffi::Buffer<ffi::F32> scale_v,
                            ffi::Buffer<ffi::F32> table_m, ffi::Buffer<ffi::F32> table_v,
                            ffi::Buffer<ffi::F32> coef, bool nesterov,
                            ffi::ResultBuffer<ffi::F32> u, ffi::ResultBuffer<ffi::U8> out_m,
                            ffi::ResultBuffer<ffi::U8> out_v,
                            ffi::ResultBuffer<ffi::F32> out_scale_m,
                            ffi::ResultBuffer<ffi::F32> out_scale_v) {
  const auto dims = g.dimensions();
  if (dims.size() < 1 || table_m.element_count() != 256 || table_v.element_count() != 256 ||
      coef.element_count() != 9) {
    return ffi::Error::InvalidArgument("adam8bit step: unexpected operand shapes");
  }
  const int64_t block = dims.back();
  const int64_t n = static_cast<int64_t>(g.element_count());
  const int64_t rows = block > 0 ? n / block : 0;
  if (codes_m.element_count() != static_cast<size_t>(n) ||
      codes_v.element_count() != static_cast<size_t>(n) ||
      scale_m.element_count() != static_cast<size_t>(rows) ||
      scale_v.element_count() != static_cast<size_t>(rows)) {
    return ffi::Error::InvalidArgument("adam8bit step: codes or scales do not match the gradient");
  }
  if (rows == 0) return ffi::Error::Success();
  const float* k = coef.typed_data();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // XLA allocates the update afresh on every step; above malloc's mmap threshold
  // (32 MB) that is new memory, faulted in page by page on first touch. Ask for
  // transparent huge pages on the 2 MB-aligned part: 512 times fewer faults. A
  // hint only: nothing changes where the kernel does not honour it.
  {
    constexpr uintptr_t kHuge = uintptr_t{1} << 21;
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(u->typed_data()) + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(u->typed_data() + n)) & ~(kHuge - 1);
    if (hi > lo + 8 * kHuge) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  auto work = std::make_shared<Work>();
  work->step = Step{g.typed_data(), codes_m.typed_data(), codes_v.typed_data(),
                    scale_m.typed_data(), scale_v.typed_data(), table_m.typed_data(),
                    table_v.typed_data(), u->typed_data(), out_m->typed_data(),
                    out_v->typed_data(), out_scale_m->typed_data(), out_scale_v->typed_data(),
                    block, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8], nesterov};
  work->rows = rows;
  // Chunks of about 64K elements: small enough to share among threads, large
  // enough that handing them out costs nothing measurable.
  work->chunk = std::max<int64_t>(1, (int64_t{1} << 16) / block);
  work->chunks = (rows + work->chunk - 1) / work->chunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

// 16 where the kernel was built with AVX-512 (its measured fast path), else 1.
extern "C" int AdamJaxAdam8bitLanes() {
#if defined(__AVX512F__)
  return 16;
#else
  return 1;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamJaxAdam8bitStep, Adam8bitStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::U8>>()   // codes_m
                                  .Arg<ffi::Buffer<ffi::U8>>()   // codes_v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale_m
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale_v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table_m
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table_v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coef
                                  .Attr<bool>("nesterov")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u
                                  .Ret<ffi::Buffer<ffi::U8>>()   // codes_m
                                  .Ret<ffi::Buffer<ffi::U8>>()   // codes_v
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scale_m
                                  .Ret<ffi::Buffer<ffi::F32>>());  // scale_v
