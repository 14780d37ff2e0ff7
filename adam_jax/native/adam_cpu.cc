// One float32 Adam step over every leaf of a parameter tree, in one call.
//
// The XLA program of adam_jax.transforms.adam.scale_by_adam is three loops per
// leaf on CPU (new m; new v; the update, fused by XLA with the rest of the chain
// and optax.apply_updates), each a separate piece of work for the runtime, and a
// leaf of a few thousand elements is too small for XLA to split across threads.
// This kernel takes all leaves at once: the parameter set, read as one sequence
// of elements, is cut into chunks of about 32K elements (a chunk may span many
// small leaves or a slice of a large one) that the calling thread and XLA's
// intra-op threads take from a shared counter. Per element it reads g, m, v
// (and AMSGrad's maximum), writes m, v (in place when XLA aliases them) and the
// update: one pass instead of three.
//
// The arithmetic is adam_jax.transforms._common.adam_leaf's as XLA:CPU compiles
// it, rounding for rounding: XLA turns each division by a bias correction into a
// multiplication by its reciprocal, and LLVM contracts `a * b + c * d` into
// fma(a, b, c * d). Written here with the same reciprocals and explicit fma (and
// no other contraction: built with -ffp-contract=off), so that on this path the
// kernel and the XLA program agree bit for bit (tested):
//   m' = fma(b1, m, (1 - b1) g)        v' = fma(b2, v, (1 - b2) (g g))
//   w  = max(w, v') (AMSGrad; NaN wins), else w = v'
//   mh = m' a_m, or with Nesterov fma(m', a_m, g a_g)
//   u  = mh / (sqrt(fma(w, 1 / bc2, eps_root)) + eps)
// with a_m = 1 / bc1 (Nesterov: b1 / bc1_next, a_g = (1 - b1) / bc1). Plain loops
// for the compiler to vectorise (AVX2 or AVX-512 from -march=native; no
// intrinsics).
//
// Operands: coef f32[9] = b1, 1 - b1, b2, 1 - b2, a_m, a_g, 1 / bc2, eps, eps_root;
//           then g_0..g_{n-1}, m_0.., v_0.. (and w_0.. with AMSGrad), float32.
// Results : u_0..u_{n-1}, m_0.., v_0.. (and w_0..), shaped like the operands; m, v
//           and w may be the operands' buffers (input-output aliasing): each
//           element is read before it is written, by the same thread.
// Attributes: nesterov, amsgrad (bool).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Coef {
  float b1, one_minus_b1, b2, one_minus_b2, a_m, a_g, inv_bc2, eps, eps_root;
};

struct Leaf {
  const float* g;
  const float* m;
  const float* v;
  const float* w;  // AMSGrad's maximum, or null
  float* u;
  float* m_out;
  float* v_out;
  float* w_out;
};

// u[0, n) = tile[0, n) with non-temporal stores where the vectors are aligned: the
// update is read once, by the next loop of the step (apply_updates), long after
// this chunk; written through the cache, each of its lines would first be read
// from memory (4 bytes per parameter more traffic).
inline void StreamStore(float* u, const float* tile, int64_t n) {
#if defined(__AVX512F__)
  constexpr int64_t kVec = 16;
#elif defined(__AVX__)
  constexpr int64_t kVec = 8;
#else
  constexpr int64_t kVec = 1;
#endif
  int64_t i = 0;
  if constexpr (kVec > 1) {
    const int64_t misaligned = (reinterpret_cast<uintptr_t>(u) / sizeof(float)) % kVec;
    const int64_t head = std::min(n, misaligned == 0 ? 0 : kVec - misaligned);
    for (; i < head; ++i) u[i] = tile[i];
    for (; i + kVec <= n; i += kVec) {
#if defined(__AVX512F__)
      _mm512_stream_ps(u + i, _mm512_loadu_ps(tile + i));
#elif defined(__AVX__)
      _mm256_stream_ps(u + i, _mm256_loadu_ps(tile + i));
#endif
    }
  }
  for (; i < n; ++i) u[i] = tile[i];
}

// Elements [lo, hi) of one leaf, in tiles that stay in L1. m_out may be m (and so
// on): every iteration reads its element before writing it and no iteration
// touches another's, which is what `ivdep` promises the compiler. kStream: the
// update goes through a tile and non-temporal stores (StreamStore).
template <bool kNesterov, bool kAmsgrad, bool kStream>
void StepRange(const Coef& c, const Leaf& leaf, int64_t lo, int64_t hi) {
  const float b1 = c.b1, one_minus_b1 = c.one_minus_b1, b2 = c.b2;
  const float one_minus_b2 = c.one_minus_b2, a_m = c.a_m, a_g = c.a_g;
  const float inv_bc2 = c.inv_bc2, eps = c.eps, eps_root = c.eps_root;
  constexpr int64_t kTile = 1024;
  alignas(64) float tile[kStream ? kTile : 1];
  for (int64_t t0 = lo; t0 < hi; t0 += kTile) {
    const int64_t n = std::min(kTile, hi - t0);
    const float* g = leaf.g + t0;
    const float* m = leaf.m + t0;
    const float* v = leaf.v + t0;
    const float* w = leaf.w + (kAmsgrad ? t0 : 0);
    float* u = kStream ? tile : leaf.u + t0;
    float* m_out = leaf.m_out + t0;
    float* v_out = leaf.v_out + t0;
    float* w_out = leaf.w_out + (kAmsgrad ? t0 : 0);
#if defined(__clang__)
#pragma clang loop vectorize(assume_safety)
#elif defined(__GNUC__)
#pragma GCC ivdep
#endif
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i];
      const float mi = std::fma(b1, m[i], one_minus_b1 * gi);
      const float vi = std::fma(b2, v[i], one_minus_b2 * (gi * gi));
      float wi = vi;
      if constexpr (kAmsgrad) {
        // jnp.maximum: NaN if either is NaN.
        const float old = w[i];
        wi = (old > vi || std::isnan(old)) ? old : vi;
        w_out[i] = wi;
      }
      const float mh = kNesterov ? std::fma(mi, a_m, gi * a_g) : mi * a_m;
      m_out[i] = mi;
      v_out[i] = vi;
      u[i] = mh / (std::sqrt(std::fma(wi, inv_bc2, eps_root)) + eps);
    }
    if constexpr (kStream) StreamStore(leaf.u + t0, tile, n);
  }
}

// XLA allocates the updates afresh on every step (one temporary allocation for
// all of them). Above malloc's mmap threshold that is new memory, faulted in page
// by page on first touch: 4096 faults for 16 MB, measured to triple the step on
// a loaded machine. Ask for transparent huge pages on the 2 MB-aligned part of
// the span the updates cover, when they lie together (512 times fewer faults).
// A hint only: nothing changes where the kernel does not honour it.
inline void AdviseHugePages(const std::vector<std::pair<uintptr_t, uintptr_t>>& ranges,
                            int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (ranges.empty() || bytes < static_cast<int64_t>(8 * kHuge)) return;
  uintptr_t first = ranges[0].first, last = ranges[0].second;
  for (const auto& r : ranges) {
    first = std::min(first, r.first);
    last = std::max(last, r.second);
  }
  if (last - first > 2 * static_cast<uintptr_t>(bytes)) return;  // not one allocation
  const uintptr_t lo = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = last & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// glibc serves allocations above its mmap threshold with fresh mappings, and
// raises the threshold (to at most 32 MB) when such a mapping is freed. Whether
// that has happened before the first step decides whether XLA's temporary for
// the updates is reused from step to step or faulted in anew on every step
// (measured: 4097 faults per step for 4M parameters, the step 2-4 times slower
// on a loaded machine). Free one such mapping once, when the library is loaded:
// the updates of up to 8M parameters then come from the heap. glibc's own rule,
// triggered early; it changes nothing for larger buffers.
const bool kMmapThresholdRaised = [] {
  void* volatile p = std::malloc((size_t{32} << 20) - (size_t{1} << 16));
  if (p != nullptr) static_cast<char*>(p)[0] = 0;
  std::free(p);
  return true;
}();

using RangeFn = void (*)(const Coef&, const Leaf&, int64_t, int64_t);

// Chunks of the parameter set, read as one sequence of elements, are handed out
// from a shared counter to the calling thread and to tasks on XLA's intra-op
// thread pool. The caller waits only for chunks a task has already claimed
// (never for a task still queued), so the step cannot deadlock when every pool
// thread is itself busy; a task that starts after the last chunk was claimed
// finds nothing to do and only touches the shared state, which it keeps alive.
struct Work {
  Coef coef;
  RangeFn fn = nullptr;
  std::vector<Leaf> leaves;
  std::vector<int64_t> starts;  // starts[i]: first element of leaf i; back(): total
  int64_t chunk = 0;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void RunChunk(int64_t c) const {
    const int64_t begin = c * chunk;
    const int64_t end = std::min(starts.back(), begin + chunk);
    // The leaf holding `begin`: the last start <= begin (empty leaves are skipped).
    size_t i = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (int64_t pos = begin; pos < end; ++i) {
      const int64_t leaf_end = std::min(end, starts[i + 1]);
      if (leaf_end > pos) fn(coef, leaves[i], pos - starts[i], leaf_end - starts[i]);
      pos = std::max(pos, leaf_end);
    }
  }

  void Drain() {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      RunChunk(c);
#if defined(__SSE2__)
      _mm_sfence();  // the chunk's non-temporal stores, before it is counted done
#endif
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

template <bool kStream>
RangeFn SelectStream(bool nesterov, bool amsgrad) {
  if (nesterov) return amsgrad ? StepRange<true, true, kStream> : StepRange<true, false, kStream>;
  return amsgrad ? StepRange<false, true, kStream> : StepRange<false, false, kStream>;
}

RangeFn Select(bool nesterov, bool amsgrad, bool stream) {
  return stream ? SelectStream<true>(nesterov, amsgrad) : SelectStream<false>(nesterov, amsgrad);
}

// Chunks of 32K elements (128 KB per stream): small enough to share a few
// million parameters among threads evenly, large enough that handing them out
// costs nothing measurable.
constexpr int64_t kChunk = int64_t{1} << 15;

// From this many parameters (16 MB of updates) the update bypasses the caches.
constexpr int64_t kStreamFrom = int64_t{1} << 22;

ffi::Error AdamStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coef,
                        ffi::RemainingArgs args, ffi::RemainingRets rets, bool nesterov,
                        bool amsgrad) {
  const size_t streams = amsgrad ? 4 : 3;
  if (coef.element_count() != 9 || args.size() % streams != 0 || rets.size() != args.size()) {
    return ffi::Error::InvalidArgument("adam step: unexpected number of operands");
  }
  const size_t n = args.size() / streams;
  auto work = std::make_shared<Work>();
  const float* k = coef.typed_data();
  work->coef = Coef{k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]};
  work->fn = nullptr;
  work->leaves.resize(n);
  work->starts.resize(n + 1);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    float* in[4] = {nullptr, nullptr, nullptr, nullptr};
    float* out[4] = {nullptr, nullptr, nullptr, nullptr};
    size_t size = 0;
    for (size_t s = 0; s < streams; ++s) {
      auto a = args.get<ffi::Buffer<ffi::F32>>(s * n + i);
      auto r = rets.get<ffi::Buffer<ffi::F32>>(s * n + i);
      if (!a.has_value() || !r.has_value()) {
        return ffi::Error::InvalidArgument("adam step: every buffer must be float32");
      }
      if (s == 0) size = a->element_count();
      if (a->element_count() != size || (*r)->element_count() != size) {
        return ffi::Error::InvalidArgument("adam step: a leaf's buffers differ in size");
      }
      in[s] = a->typed_data();
      out[s] = (*r)->typed_data();
    }
    // Results are ordered u, m, v, w; operands g, m, v, w.
    work->leaves[i] = Leaf{in[0], in[1], in[2], in[3], out[0], out[1], out[2], out[3]};
    work->starts[i] = total;
    total += static_cast<int64_t>(size);
  }
  work->starts[n] = total;
  if (total == 0) return ffi::Error::Success();
  {
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges(n);
    for (size_t i = 0; i < n; ++i) {
      const auto u = reinterpret_cast<uintptr_t>(work->leaves[i].u);
      ranges[i] = {u, u + sizeof(float) * (work->starts[i + 1] - work->starts[i])};
    }
    AdviseHugePages(ranges, static_cast<int64_t>(sizeof(float)) * total);
  }
  work->fn = Select(nesterov, amsgrad, total >= kStreamFrom);
  work->chunk = kChunk;
  work->chunks = (total + kChunk - 1) / kChunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  // The chunks still running on other threads: blocking, not spinning, which on a
  // loaded machine would take the core from the very thread being waited for.
  std::unique_lock<std::mutex> lock(work->mutex);
  work->finished.wait(
      lock, [&] { return work->done.load(std::memory_order_acquire) == work->chunks; });
  return ffi::Error::Success();
}

}  // namespace

// The width in float32 lanes of the widest vectors this build may use: 16 with
// AVX-512, 8 with AVX2 (the kernel is used from 8 up), 4 otherwise (and 1 without
// hardware fma, which would be a library call per element).
extern "C" int AdamJaxAdamLanes() {
#if !defined(__FMA__) && !defined(__aarch64__)
  return 1;
#elif defined(__AVX512F__)
  return 16;
#elif defined(__AVX2__)
  return 8;
#else
  return 4;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamJaxAdamStep, AdamStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coef
                                  .RemainingArgs()               // g.., m.., v.. (w..)
                                  .RemainingRets()               // u.., m.., v.. (w..)
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("amsgrad"));
