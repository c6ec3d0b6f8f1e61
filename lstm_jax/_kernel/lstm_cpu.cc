// A fused LSTM layer for XLA:CPU, called through the XLA FFI (lstm_jax/_kernel/__init__.py builds and registers it).
//
// Why a kernel of its own: XLA:CPU runs the LSTM's small per-step matmul at 0.7-0.8x of torch's MKL and wakes its
// thread pool for every one of them (README, "Why not faster than PyTorch"). Here the whole time loop runs inside one
// call, on threads that stay alive for the whole sequence and meet at a spin barrier once per step:
//
// * Forward: each thread owns blocks of kUnits hidden units (16 with AVX-512, else 8: one vector register). Its
//   slice of [W_ih; W_hh] is packed once per call into a panel per block, (I+H) rows x 4 kUnits columns = the i, f,
//   g, o columns of those units, so a register tile of z = [x_t, h_{t-1}] @ [W_ih; W_hh] + b (kRows rows x 4
//   vectors) holds whole gates, and the cell update runs on the registers before anything is stored. Threads read
//   all of h_{t-1} and write their units of h_t (double-buffered), so one barrier per step suffices.
// * Backward: phase 1, per thread and unit block, turns (dh, dc) and the stored gate activations into dz_t and the
//   next dc; a barrier; phase 2 computes the thread's units of dh_{t-1} = dz_t @ W_hh^T from all of dz_t. Phase 1 of
//   the next step only reads the thread's own units, so again one barrier per step. The weight gradients of the
//   thread's columns accumulate [x_t, h_{t-1}]^T dz_t in panels, step by step or, where the panels outgrow the
//   caches, every 4 steps over those steps' rows.
// * Two directions of a bidirectional layer run on separate thread groups at the same time, each reading xs in its
//   own order, so no reversed copy of the input is made.
//
// Numerics: float32 throughout; sigma(x) = (1 + tanh(x/2)) / 2 and tanh is Eigen's rational approximation (the one
// XLA:CPU uses for jnp.tanh), so results agree with the XLA paths to float32 rounding. Variable lengths follow
// pack_padded_sequence: step t of row b is valid when t < lengths[b]; invalid steps keep the state, output zeros
// and pass gradients through.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LSTM_JAX_PAUSE() _mm_pause()
#else
#define LSTM_JAX_PAUSE() \
  do {                   \
  } while (0)
#endif

namespace ffi = xla::ffi;

namespace {

// The register tiles are sized for the machine's vector registers. With AVX-512 (32 registers of 16 floats) a
// unit block is 16 hidden units and a tile 6 rows x 4 vectors = 24 accumulators. Without it (AVX2: 16 registers of
// 8 floats), 16-float vectors compiled to pairs of registers and the 48 accumulators of that tile spilled to the
// stack at every multiply-add: on a 2-core AMD EPYC (Zen 1) a one-layer training step at T = 16, I = H = 256 took
// 218 ms against torch's 31. There a block is 8 units and a tile 3 rows x 4 vectors = 12 accumulators, with room
// for the 4 panel vectors it multiplies. LSTM_JAX_UNITS (8 or 16; the build's -D flag, set from
// $LSTM_JAX_KERNEL_UNITS) picks either tiling on any x86-64 CPU, so that the tests run both: 16-float vectors
// without AVX-512 compile to pairs of AVX registers, slow but the same arithmetic in the same order.
#if !defined(LSTM_JAX_UNITS) && defined(__AVX512F__)
#define LSTM_JAX_UNITS 16
#elif !defined(LSTM_JAX_UNITS)
#define LSTM_JAX_UNITS 8
#endif
constexpr int kUnits = LSTM_JAX_UNITS;  // hidden units per block: one vector
static_assert(kUnits == 8 || kUnits == 16, "LSTM_JAX_UNITS: hidden units per block, 8 or 16");
constexpr int kRows = kUnits == 16 ? 6 : 3;       // rows of a register tile of 4 vectors
constexpr int kOuterRows = kUnits == 16 ? 4 : 3;  // weight-gradient rows per tile of the update (4 x 4 accumulators)
constexpr int kColumns = 4 * kUnits;  // a unit block's gate columns: i, f, g, o of its units, side by side

// One vector of kUnits floats (one register of its width), and the same type for loads and stores at any address.
typedef float vec __attribute__((vector_size(kUnits * sizeof(float))));
typedef float vecu __attribute__((vector_size(kUnits * sizeof(float)), aligned(4)));
constexpr int kChunk = 128; // rows of a weight panel kept in L1 while every row tile passes over it
constexpr int kGradientSteps = 4;  // time steps per weight-gradient update of the backward pass

inline vec load(const float* p) { return *reinterpret_cast<const vecu*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vecu*>(p) = v; }
inline vec splat(float s) { return (vec){} + s; }

// The first n floats of v to p (n < kUnits only in the last block when H is not a multiple of kUnits).
inline void store_n(float* p, vec v, int n) {
  if (n == kUnits) {
    store(p, v);
  } else {
    float tmp[kUnits];
    store(tmp, v);
    std::memcpy(p, tmp, sizeof(float) * n);
  }
}
// store_n, or with a non-temporal store (around the caches) when `stream` and a whole aligned vector goes out.
inline void store_n(float* p, vec v, int n, bool stream) {
  if (stream && n == kUnits && (reinterpret_cast<uintptr_t>(p) % sizeof(vec)) == 0) {
#if LSTM_JAX_UNITS == 16 && defined(__AVX512F__)
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
    return;
#elif LSTM_JAX_UNITS == 8 && defined(__AVX__)
    _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
    return;
#elif defined(__AVX__)  // 16 floats without AVX-512: two 256-bit halves
    const float* lanes = reinterpret_cast<const float*>(&v);
    _mm256_stream_ps(p, _mm256_loadu_ps(lanes));
    _mm256_stream_ps(p + 8, _mm256_loadu_ps(lanes + 8));
    return;
#endif
  }
  store_n(p, v, n);
}
inline vec load_n(const float* p, int n) {
  if (n == kUnits) return load(p);
  float tmp[kUnits] = {};
  std::memcpy(tmp, p, sizeof(float) * n);
  return load(tmp);
}

// Eigen's float tanh (generic_fast_tanh_float): a 13/6 rational approximation on [-7.9, 7.9], +-1 beyond.
inline vec vtanh(vec x) {
  const float limit = 7.90531110763549805f;
  x = x < -limit ? splat(-limit) : x;
  x = x > limit ? splat(limit) : x;
  const vec x2 = x * x;
  vec p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  vec q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}
inline vec vsigmoid(vec x) { return 0.5f + 0.5f * vtanh(0.5f * x); }

// acc[r][v] += sum_k a[r * lda + k] * w[v][k * ldw + 0..kUnits-1] for k < n: the register tile every matmul here uses.
template <int MR, int NV>
inline void tile(const float* a, long lda, int n, const float* const* w, long ldw, vec (&acc)[kRows][4]) {
  vec c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = acc[r][v];
  for (int k = 0; k < n; ++k) {
    vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(w[v] + k * ldw);
    for (int r = 0; r < MR; ++r) {
      const float s = a[r * lda + k];
      for (int v = 0; v < NV; ++v) c[r][v] += s * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = c[r][v];
}

// Rows of the next register tile when `left` rows remain: full tiles, except that kRows + 1 to 2 kRows - 1
// remaining rows are split into two tiles of about half (6-row tiles, B = 32: 6, 6, 6, 6, 4, 4 rather than ..., 6,
// 2, whose 8 accumulators per 6 loads leave the FMA units waiting).
inline int tile_height(int left) { return left <= kRows ? left : left < 2 * kRows ? (left + 1) / 2 : kRows; }

// tile<mr, NV> for a run-time mr of 1 to kRows.
template <int NV, int MR = kRows>
inline void tile_rows(int mr, const float* a, long lda, int n, const float* const* w, long ldw, vec (&acc)[kRows][4]) {
  if constexpr (MR > 1) {
    if (mr < MR) return tile_rows<NV, MR - 1>(mr, a, lda, n, w, ldw, acc);
  }
  tile<MR, NV>(a, lda, n, w, ldw, acc);
}

inline void tile_any(int mr, int nv, const float* a, long lda, int n, const float* const* w, long ldw,
                     vec (&acc)[kRows][4]) {
  switch (nv) {
    case 4: tile_rows<4>(mr, a, lda, n, w, ldw, acc); break;
    case 3: tile_rows<3>(mr, a, lda, n, w, ldw, acc); break;
    case 2: tile_rows<2>(mr, a, lda, n, w, ldw, acc); break;
    default: tile_rows<1>(mr, a, lda, n, w, ldw, acc); break;
  }
}

// Allocates on 64-byte boundaries: a vector load from a panel then never straddles two cache lines. (operator new
// gives 16 bytes, and where a buffer started 16 bytes past a line every panel load read two lines: the same code ran
// up to 10 % faster or slower from one process to the next, as the allocator placed the panels.)
template <typename T>
struct LineAligned {
  using value_type = T;
  static constexpr std::size_t kAlignment = 64;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlignment))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(kAlignment)); }
  template <typename U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
using FloatBuffer = std::vector<float, LineAligned<float>>;

// Zeroed float scratch memory that outlives the call: buffers go back to a process-wide pool and are handed out
// again, so a call does not page-fault its way through fresh allocations (for B=32, H=256 that alone cost ~0.5 ms
// per call, more than a dozen time steps). The pool keeps the largest sizes used concurrently; nothing is shared
// between calls running at the same time.
class Scratch {
 public:
  // zeroed = false: the caller writes every element it reads (a reused buffer holds the last call's numbers).
  explicit Scratch(size_t size, bool zeroed = true) : buffer_(take(size)) {
    if (zeroed) {
      buffer_->assign(size, 0.f);
    } else {
      buffer_->resize(size);
    }
  }
  Scratch(Scratch&& other) noexcept = default;
  ~Scratch() {
    if (buffer_ == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex());
    pool().push_back(std::move(buffer_));
  }
  float* data() { return buffer_->data(); }
  float& operator[](size_t i) { return (*buffer_)[i]; }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<FloatBuffer>>& pool() {
    static auto* buffers = new std::vector<std::unique_ptr<FloatBuffer>>();  // never destroyed: see exit
    return *buffers;
  }
  // The smallest pooled buffer that holds size floats, else the largest (it grows), else a new one.
  static std::unique_ptr<FloatBuffer> take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex());
    auto& buffers = pool();
    if (buffers.empty()) return std::make_unique<FloatBuffer>();
    size_t best = 0;
    for (size_t i = 1; i < buffers.size(); ++i) {
      const size_t have = buffers[i]->capacity(), chosen = buffers[best]->capacity();
      const bool fits = have >= size, chosen_fits = chosen >= size;
      if ((fits && (!chosen_fits || have < chosen)) || (!fits && !chosen_fits && have > chosen)) best = i;
    }
    auto buffer = std::move(buffers[best]);
    buffers.erase(buffers.begin() + best);
    return buffer;
  }
  std::unique_ptr<FloatBuffer> buffer_;
};

// A sense-reversing barrier that spins (the wait is a few microseconds: one step of the other threads) and yields
// after a millisecond, so an oversubscribed machine still makes progress.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  // Split in two, so a thread can do work that does not depend on the others between arriving and waiting:
  // a fuzzy barrier, which hides the threads' skew behind that work.
  int arrive() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
    }
    return generation;
  }
  void wait(int generation) {
    // Spin for up to ~1 ms (a yield can cost a whole scheduler time slice), then yield between checks.
    auto deadline = std::chrono::steady_clock::time_point::max();
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if ((spins & 255) != 255) {
        LSTM_JAX_PAUSE();
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      if (deadline == std::chrono::steady_clock::time_point::max()) {
        deadline = now + std::chrono::milliseconds(1);
      } else if (now > deadline) {
        std::this_thread::yield();
      }
    }
  }
  void wait() { wait(arrive()); }

 private:
  const int n_;
  // Apart, so the threads spinning on the generation do not slow the last arrival's update of the count.
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// The per-core L2 cache size, for deciding what stays in cache; 1 MiB where the system does not say.
size_t l2_bytes() {
  static const size_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? static_cast<size_t>(reported) : size_t{1} << 20;
  }();
  return bytes;
}

// Maps in part `part` of `parts` of a large output buffer before the kernel writes it (MADV_POPULATE_WRITE), each
// participant thread its own share, in parallel. XLA:CPU allocates a computation's temporary memory afresh for every
// call, glibc serves large blocks with fresh mappings and returns them to the OS when they are freed, so a training
// step page-faulted its way through the activations its forward saves: a fault per 4 KiB page, each stalling the
// other threads at the next barrier. Mapped up front, the pages cost a third less and no barrier waits on them
// (one layer, T = 1024, timed between Flax and torch calls as the benchmark does: 340-360 ms against 370-400 ms with
// faults in the loop). A part whose first page is mapped already (memory glibc hands out again) is left as it is,
// and so are buffers under 2 MiB.
//
// LSTM_JAX_KERNEL_HUGE_PAGES=1 also asks for transparent huge pages (MADV_HUGEPAGE on the buffer's 2 MiB-aligned
// interior). A huge page is zeroed at a third of the cost of its 512 small ones, and steps ran up to 15 % faster
// when the kernel found huge pages ready; but on this project's benchmark machine, a VM that reports large free
// blocks back to its host, a process that had just freed large buffers (the benchmark's other implementations) got
// cold ones, and a third to a half of the timed calls took 1.3-1.7x as long — so the advice is off by default. Where
// glibc carved the buffer out of its heap the advice stays on that range after the buffer is freed.
constexpr size_t kPrefaultMinBytes = size_t{2} << 20;
void prefault(void* data, size_t bytes, int part, int parts) {
  if (bytes < kPrefaultMinBytes) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20, kPage = 4096;
  const uintptr_t start = reinterpret_cast<uintptr_t>(data), stop = start + bytes;
  const uintptr_t huge_begin = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t huge_end = std::max(huge_begin, stop & ~(kHuge - 1));
  // The parts meet at 2 MiB boundaries, so that no two threads fault in the same huge page.
  const uintptr_t huge_pages = (huge_end - huge_begin) / kHuge;
  auto cut = [&](int i) { return i == 0 ? start : i == parts ? stop : huge_begin + huge_pages * i / parts * kHuge; };
  const uintptr_t lo = cut(part), hi = cut(part + 1);
#ifdef MADV_HUGEPAGE
  const char* setting = std::getenv("LSTM_JAX_KERNEL_HUGE_PAGES");
  const uintptr_t advise_lo = std::max(lo, huge_begin), advise_hi = std::min(hi, huge_end);
  if (setting != nullptr && std::strcmp(setting, "1") == 0 && advise_hi > advise_lo)
    madvise(reinterpret_cast<void*>(advise_lo), advise_hi - advise_lo, MADV_HUGEPAGE);
#endif
#ifdef MADV_POPULATE_WRITE  // Linux 5.14 and later; an older kernel refuses it, and the pages fault in as written
  const uintptr_t populate_lo = (lo + kPage - 1) & ~(kPage - 1), populate_hi = hi & ~(kPage - 1);
  if (populate_hi <= populate_lo) return;
  // Only where the part is not mapped in yet: glibc hands out either fresh mappings or memory of its heap that
  // earlier calls have touched, so the first page tells. (Populating memory mapped already only walks the page
  // tables, but that alone made a two-layer training step at T = 64 1.02x as long.)
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(populate_lo), kPage, &resident) == 0 && (resident & 1)) return;
  madvise(reinterpret_cast<void*>(populate_lo), populate_hi - populate_lo, MADV_POPULATE_WRITE);
#endif
}

struct Shape {
  int T, B, I, H;
  int input_steps = 0;  // steps per block of the forward's input part; 0: chosen by the panel's size
  int gradient_steps = 0;  // steps per weight-gradient update of the backward; 0: chosen by the panels' size
  int blocks() const { return (H + kUnits - 1) / kUnits; }
  int padded() const { return blocks() * kUnits; }
  int units(int block) const { return std::min(kUnits, H - block * kUnits); }
};

// Whether this thread is a worker of XLA's intra-op pool: learnt when one of our tasks runs on it.
thread_local bool t_xla_pool_worker = false;

// Runs work(direction, thread_in_group, threads_in_group, barrier) for every direction: directions are spread over
// groups of threads that run at the same time; a group runs its directions one after the other. The returned
// future completes when the last participant finishes, which may be after this returns: XLA then goes on with the
// next operations on that participant's thread.
//
// The participants run on XLA's own intra-op thread pool when its workers pick the tasks up promptly: those workers
// otherwise spin for a while looking for work, and on a machine with as many cores as participants a thread of our
// own would compete with them for a core (measured: a third of a short call spent at the barrier). A calling
// thread that is a pool worker takes part itself. XLA also runs custom calls on threads outside the pool: for the
// calls of a training step (`hand_off`) such a caller hands every participant to the pool and returns at once, so
// that the next call starts on the pool worker that finished this one, which then takes part in it. When such a
// caller took part instead, the other pool worker, woken by the task but finding none, kept a core busy (a quarter
// of the T = 16 training steps took 1.5-3x the median, session 4; session 10: training 0.96-0.99x as fast as handing
// off); when it handed off and slept until the work was done, it was woken for every call, 60-110 us per call on
// this 2-core VM, and handing off without waiting, training steps took 0.97-1.00x the time (same-process A/Bs, one
// and two layers, T = 16-256, bidirectional). A lone inference call is the other way round: the caller taking part
// saves waking a second pool worker and the caller (one layer T = 16 1.03x, two layers 1.02-1.09x, bidirectional
// 1.01-1.05x; per call, every percentile lower: p50 1.83 -> 1.70 ms, p99 2.60 -> 2.20 ms at one layer).
//
// A participant that no worker has claimed within 200 us runs on a thread of its own instead, so the call never
// depends on the pool having a free worker: the first participant to start watches for that.
template <typename Work>
class Team {
 public:
  Team(int directions, int threads, int blocks, Work work) : directions_(directions), work_(std::move(work)) {
    groups_ = std::max(1, std::min(directions, threads));
    for (int g = 0; g < groups_; ++g) {
      group_threads_.push_back(std::max(1, std::min(blocks, threads / groups_ + (g < threads % groups_ ? 1 : 0))));
      barriers_.push_back(std::make_unique<Barrier>(group_threads_[g]));
      for (int p = 0; p < group_threads_[g]; ++p) members_.push_back({g, p});
    }
    claims_ = std::make_unique<std::atomic<bool>[]>(members_.size());
    for (size_t i = 0; i < members_.size(); ++i) claims_[i] = false;
  }
  int size() const { return static_cast<int>(members_.size()); }

  // Member i's work, on this thread, unless another thread has taken it. The first member to start sees to it that
  // the others start too (watch); the last to finish completes the promise.
  static void run(const std::shared_ptr<Team>& team, int i) {
    if (team->claims_[i].exchange(true, std::memory_order_acq_rel)) return;
    if (team->claimed_.fetch_add(1, std::memory_order_acq_rel) == 0) watch(team);
    const Member m = team->members_[i];
    for (int d = m.g; d < team->directions_; d += team->groups_)
      (*team->work_)(d, m.p, team->group_threads_[m.g], *team->barriers_[m.g]);
    if (team->done_.fetch_add(1, std::memory_order_acq_rel) + 1 == team->size()) {
      team->work_.reset();  // its scratch buffers go back to the pool before XLA's next operation runs, from here
      team->promise.SetAvailable();
    }
  }

  ffi::Promise promise;
  std::chrono::steady_clock::time_point deadline;  // by when the pool's workers should have claimed every member

 private:
  struct Member {
    int g, p;  // group, and place in the group
  };
  // Waits until every member is claimed or the deadline passes; unclaimed members then get threads of their own.
  static void watch(const std::shared_ptr<Team>& team) {
    while (team->claimed_.load(std::memory_order_acquire) < team->size() &&
           std::chrono::steady_clock::now() < team->deadline)
      LSTM_JAX_PAUSE();
    for (int i = 0; i < team->size(); ++i)
      if (!team->claims_[i].load(std::memory_order_acquire)) std::thread([team, i] { run(team, i); }).detach();
  }

  const int directions_;
  int groups_;
  std::optional<Work> work_;
  std::vector<int> group_threads_;
  std::vector<std::unique_ptr<Barrier>> barriers_;
  std::vector<Member> members_;
  std::unique_ptr<std::atomic<bool>[]> claims_;  // whether a thread has taken member i
  std::atomic<int> claimed_{0}, done_{0};
};

template <typename Work>
ffi::Future run_threads(int directions, int threads, int blocks, ffi::ThreadPool* xla_pool, bool hand_off, Work work) {
  auto team = std::make_shared<Team<Work>>(directions, threads, blocks, std::move(work));
  ffi::Future future(team->promise);
  const bool use_pool = xla_pool != nullptr && xla_pool->num_threads() > 1;
  const bool caller_joins = !use_pool || t_xla_pool_worker || !hand_off;
  team->deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(use_pool ? 200 : 0);
  if (use_pool)
    for (int i = caller_joins ? 1 : 0; i < team->size(); ++i)
      xla_pool->Schedule([team, i] {
        t_xla_pool_worker = true;
        Team<Work>::run(team, i);
      });
  if (caller_joins) Team<Work>::run(team, 0);
  return future;
}

// z = bias + x W_ih for one unit block: x is (rows, I), the block's panel [I][kColumns] (the first I rows of its
// [W_ih; W_hh] panel), z [rows][kColumns]. 128 panel rows at a time, so that they stay in L1 while every row tile
// passes over them, the partial sums kept in z between chunks. (benchmarks/kernel_tiles.cc times this loop alone.)
inline void input_part(const float* x, int rows, int I, const float* panel, const float* bias, float* z) {
  for (int k0 = 0; k0 < I; k0 += kChunk) {
    const int k1 = std::min(I, k0 + kChunk);
    const float* wk = panel + static_cast<size_t>(k0) * kColumns;
    const float* cols[4] = {wk, wk + kUnits, wk + 2 * kUnits, wk + 3 * kUnits};
    for (int r0 = 0, mr = 0; r0 < rows; r0 += mr) {
      mr = tile_height(rows - r0);
      vec acc[kRows][4];
      for (int r = 0; r < mr; ++r)
        for (int q = 0; q < 4; ++q)
          acc[r][q] = load(k0 == 0 ? bias + q * kUnits : z + (r0 + r) * kColumns + q * kUnits);
      tile_rows<4>(mr, x + static_cast<size_t>(r0) * I + k0, I, k1 - k0, cols, kColumns, acc);
      for (int r = 0; r < mr; ++r)
        for (int q = 0; q < 4; ++q) store(z + (r0 + r) * kColumns + q * kUnits, acc[r][q]);
    }
  }
  if (I == 0)
    for (int r = 0; r < rows; ++r)
      for (int q = 0; q < 4; ++q) store(z + r * kColumns + q * kUnits, load(bias + q * kUnits));
}

// The forward pass of one direction, on thread p of a group of P.
void forward_direction(const Shape& s, int p, int P, Barrier& barrier, bool reverse, const int32_t* lengths,
                       const float* xs, const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh,
                       const float* h0, const float* c0,
                       float* ys, long ys_stride, float* h_last, float* c_last, float* cs, float* acts, Scratch* state) {
  const int T = s.T, B = s.B, I = s.I, H = s.H, K = I + H, Hp = s.padded();
  const int u0 = s.blocks() * p / P, u1 = s.blocks() * (p + 1) / P;
  // This thread's panels: block u holds rows k of [W_ih; W_hh] at columns q*H + unit, as [K][4 gates x kUnits units].
  // Packed row by row: the weights are read in their own (row-major) order.
  // Zeroed only where a partial last block leaves padding columns that packing does not write.
  Scratch panels(static_cast<size_t>(u1 - u0) * K * kColumns, H % kUnits != 0), panel_bias((u1 - u0) * kColumns);
  for (int k = 0; k < K; ++k) {
    const float* w_row = k < I ? w_ih + static_cast<size_t>(k) * 4 * H : w_hh + static_cast<size_t>(k - I) * 4 * H;
    for (int u = u0; u < u1; ++u)
      for (int q = 0; q < 4; ++q)
        store_n(&panels[(static_cast<size_t>(u - u0) * K + k) * kColumns + q * kUnits],
                load_n(w_row + q * H + u * kUnits, s.units(u)), s.units(u));
  }
  for (int u = u0; u < u1; ++u)
    for (int q = 0; q < 4; ++q)
      for (int j = 0, at = q * H + u * kUnits; j < s.units(u); ++j)
        panel_bias[(u - u0) * kColumns + q * kUnits + j] = b_ih[at + j] + b_hh[at + j];
  // state = [h buffer 0, h buffer 1, c], each B x Hp, shared by the group; a thread touches its own units only,
  // except that every thread reads all of the current h.
  float* h_buffers[2] = {state[0].data(), state[1].data()};
  float* c_state = state[2].data();
  for (int row = 0; row < B; ++row)
    for (int u = u0; u < u1; ++u) {
      const int n = s.units(u), offset = row * Hp + u * kUnits;
      std::memcpy(h_buffers[0] + offset, h0 + row * H + u * kUnits, sizeof(float) * n);
      std::memcpy(c_state + offset, c0 + row * H + u * kUnits, sizeof(float) * n);
    }
  // z = b + x_t W_ih does not depend on the other threads, nor on the previous step: each thread computes it for a
  // block of `steps` future steps at once, between arriving at a step's barrier and waiting on it, and only the
  // h_{t-1} W_hh part waits for the others. A block of steps reads this thread's W_ih panel rows once for all of
  // its steps, so only the W_hh rows need to stay in cache from step to step (what decides the speed when a
  // thread's whole panel outgrows its core's L2, as for a bidirectional layer's one thread per direction).
  // Blocks of one step where the whole panel stays in L2: there, computing the next step's input part in every
  // barrier gap hides the threads' skew better (I = H = 256 with two threads: 1-4 % faster than blocks of 4).
  const size_t panel_bytes = static_cast<size_t>(u1 - u0) * K * kColumns * sizeof(float);
  const int steps = s.input_steps > 0                 ? s.input_steps
                    : panel_bytes <= l2_bytes() / 2 ? 1
                                                    : std::max(1, std::min(8, 128 / std::max(1, B)));
  Scratch z_input(static_cast<size_t>(u1 - u0) * steps * B * kColumns, false);
  Scratch partial(static_cast<size_t>(B + kRows) * kColumns, false);  // z of one block between K chunks
  // The first time index of the block of steps starting at `step`, in memory order, and its number of steps.
  auto block_of = [&](int step, int& t_low, int& count) {
    const int first = step - step % steps;
    count = std::min(steps, T - first);
    t_low = reverse ? T - first - count : first;
  };
  auto input_block = [&](int step) {
    int t_low, count;
    block_of(step, t_low, count);
    const float* x = xs + static_cast<size_t>(t_low) * B * I;
    const int rows = count * B;
    for (int u = u0; u < u1; ++u)
      input_part(x, rows, I, &panels[static_cast<size_t>(u - u0) * K * kColumns], &panel_bias[(u - u0) * kColumns],
                 &z_input[static_cast<size_t>(u - u0) * steps * B * kColumns]);
  };
  // The saved activations (c and the gates, for the backward call) go around the caches where this thread's W_hh
  // panel fills half its L2 or more (I = H = 384 and 512 on two threads) and they are more than four L2s: passing
  // through, they evicted panel rows the next step needs again (training 0.97-0.99x the time at I = H = 384 and
  // 512). Otherwise they stay cached for the backward, which starts with them: streamed at I = H = 256, a one-layer
  // step at T = 16 and a two-layer step at T = 64 took 1.01-1.03x as long.
  const size_t recurrent_panel_bytes = static_cast<size_t>(u1 - u0) * H * kColumns * sizeof(float);
  const bool stream_saved = cs != nullptr && sizeof(float) * 5 * T * B * H > 4 * l2_bytes() &&
                            recurrent_panel_bytes >= l2_bytes() / 2;
  const int h_chunks = (H + kChunk - 1) / kChunk, first_chunk = std::min(h_chunks - 1, u0 * kUnits / kChunk);
  const int arrived = barrier.arrive();  // the initial h is complete once everyone has written its units
  input_block(0);
  barrier.wait(arrived);
  for (int step = 0; step < T; ++step) {
    const int t = reverse ? T - 1 - step : step;
    const float* h = h_buffers[step & 1];
    float* h_next = h_buffers[(step + 1) & 1];
    int t_low, count;
    block_of(step, t_low, count);
    for (int u = u0; u < u1; ++u) {
      const float* panel = &panels[static_cast<size_t>(u - u0) * K * kColumns];
      const float* z = &z_input[(static_cast<size_t>(u - u0) * steps + (t - t_low)) * B * kColumns];
      const int n = s.units(u);
      // The h_{t-1} part of [x_t, h_{t-1}], chunk by chunk, starting with the chunk of this thread's own units:
      // they are in this core's cache, while the other threads' units of h_{t-1} stream in from theirs.
      for (int chunk = 0; chunk < h_chunks; ++chunk) {
        const int k0 = I + ((first_chunk + chunk) % h_chunks) * kChunk;
        const int k1 = std::min(K, k0 + kChunk);
        const bool first = chunk == 0, last = chunk == h_chunks - 1;
        const float* wk = panel + static_cast<size_t>(k0) * kColumns;
        const float* cols[4] = {wk, wk + kUnits, wk + 2 * kUnits, wk + 3 * kUnits};
        for (int r0 = 0, mr = 0; r0 < B; r0 += mr) {
          mr = tile_height(B - r0);
          vec acc[kRows][4];
          for (int r = 0; r < mr; ++r)
            for (int q = 0; q < 4; ++q)
              acc[r][q] = load(first ? &z[(r0 + r) * kColumns + q * kUnits]
                                     : &partial[(r0 + r) * kColumns + q * kUnits]);
          tile_rows<4>(mr, h + static_cast<size_t>(r0) * Hp + (k0 - I), Hp, k1 - k0, cols, kColumns, acc);
          if (!last) {
            for (int r = 0; r < mr; ++r)
              for (int q = 0; q < 4; ++q) store(&partial[(r0 + r) * kColumns + q * kUnits], acc[r][q]);
            continue;
          }
          for (int r = 0; r < mr; ++r) {  // the cell update, on the registers
            const int row = r0 + r;
            const size_t out = (static_cast<size_t>(t) * B + row) * H + u * kUnits;  // in cs
            float* y = ys + (static_cast<size_t>(t) * B + row) * ys_stride + u * kUnits;
            float* c_row = c_state + row * Hp + u * kUnits;
            if (lengths != nullptr && t >= lengths[row]) {  // invalid step: state unchanged, output zero
              std::memcpy(h_next + row * Hp + u * kUnits, h + row * Hp + u * kUnits, sizeof(float) * n);
              store_n(y, splat(0.f), n);
              if (cs != nullptr) store_n(cs + out, load(c_row), n);
              continue;
            }
            const vec i = vsigmoid(acc[r][0]), f = vsigmoid(acc[r][1]), g = vtanh(acc[r][2]), o = vsigmoid(acc[r][3]);
            const vec c = f * load(c_row) + i * g;
            const vec h_new = o * vtanh(c);
            store(c_row, c);
            store(h_next + row * Hp + u * kUnits, h_new);
            store_n(y, h_new, n);
            if (cs != nullptr) {
              store_n(cs + out, c, n, stream_saved);
              float* a = acts + (static_cast<size_t>(t) * B + row) * 4 * H + u * kUnits;
              store_n(a, i, n, stream_saved);
              store_n(a + H, f, n, stream_saved);
              store_n(a + 2 * H, g, n, stream_saved);
              store_n(a + 3 * H, o, n, stream_saved);
            }
          }
        }
      }
    }
    // h_t is written: arrive, then compute the next step's input part while the others finish theirs. The h
    // buffers stay safe: a thread writes h_{t+1} into this step's input buffer only after everyone has arrived,
    // that is, finished reading it.
    const int generation = barrier.arrive();
    if (step + 1 < T && (step + 1) % steps == 0) input_block(step + 1);
    barrier.wait(generation);
  }
#if defined(__x86_64__) || defined(__i386__)
  if (stream_saved) _mm_sfence();  // non-temporal stores are weakly ordered
#endif
  const float* h = h_buffers[T & 1];
  for (int row = 0; row < B; ++row)
    for (int u = u0; u < u1; ++u) {
      const int n = s.units(u), offset = row * Hp + u * kUnits;
      std::memcpy(h_last + row * H + u * kUnits, h + offset, sizeof(float) * n);
      std::memcpy(c_last + row * H + u * kUnits, c_state + offset, sizeof(float) * n);
    }
}

// dW[k0 + r][kColumns of a block] += sum over rows b of a[b][k0 + r] * dz[b][kColumns]: the weight-gradient update
// of a few steps (a contraction over their batch rows), accumulated in panels. dz is the block's compact copy,
// [rows][kColumns]: read straight from the steps' (B, 4H) buffers, their rows 4 KiB apart, the loads collide in
// L1's sets.
// The first update of a call starts from zero (`first`), so that the panels need no zeroing.
template <int KR>
inline void outer_tile(const float* const* a, int k0, int rows, const float* dz, float* dw, bool first) {
  vec acc[KR][4];
  for (int r = 0; r < KR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = first ? splat(0.f) : load(dw + r * kColumns + q * kUnits);
  for (int b = 0; b < rows; ++b) {
    const float* z = dz + b * kColumns;
    const vec z0 = load(z), z1 = load(z + kUnits), z2 = load(z + 2 * kUnits), z3 = load(z + 3 * kUnits);
    for (int r = 0; r < KR; ++r) {
      const float x = a[b][k0 + r];
      acc[r][0] += x * z0;
      acc[r][1] += x * z1;
      acc[r][2] += x * z2;
      acc[r][3] += x * z3;
    }
  }
  for (int r = 0; r < KR; ++r)
    for (int q = 0; q < 4; ++q) store(dw + r * kColumns + q * kUnits, acc[r][q]);
}

// dw (n rows x kColumns) += a^T dz over the batch, a given as one pointer per row b to its n values.
inline void accumulate_outer(const float* const* a, int n, int rows, const float* dz, float* dw, bool first) {
  int k = 0;
  for (; k + kOuterRows <= n; k += kOuterRows) outer_tile<kOuterRows>(a, k, rows, dz, dw + k * kColumns, first);
  for (; k < n; ++k) outer_tile<1>(a, k, rows, dz, dw + k * kColumns, first);
}

// The backward pass of one direction (the reverse of its forward order), on thread p of a group of P. Per step:
// phase 1 forms dz_t for this thread's units and adds [x_t, h_{t-1}]^T dz_t to their columns of dW; phase 2 forms
// dz_t @ [W_hh; W_ih]^T for this thread's units of dh_{t-1} and its share of dx_t.
void backward_direction(const Shape& s, int p, int P, Barrier& barrier, bool reverse, const int32_t* lengths,
                        const float* xs, const float* w_ih, const float* w_hh, const float* h0, const float* c0,
                        const float* ys, long ys_stride, const float* acts, const float* cs, const float* d_ys, const float* dh_last,
                        const float* dc_last, float* d_xs, float* d_w_ih, float* d_w_hh, float* d_b_ih, float* d_b_hh,
                        float* dh0, float* dc0, Scratch* state) {
  const int T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H, Hp = s.padded();
  const int u0 = s.blocks() * p / P, u1 = s.blocks() * (p + 1) / P;  // units: dz, dW columns, dh, dc
  // Gradients nobody asked for (null outputs: the caller differentiates neither the inputs nor the weights) are
  // not computed: dx is a quarter of the backward's matmul work, the weight gradients another third.
  const bool weight_grads = d_w_ih != nullptr;
  const int input_blocks = d_xs == nullptr ? 0 : (I + kUnits - 1) / kUnits;
  const int i0 = input_blocks * p / P, i1 = input_blocks * (p + 1) / P;  // this thread's share of dx
  const int own = u1 - u0, inputs = i1 - i0;
  // Panels of [W_hh; W_ih]^T: an output block (kUnits units of h, or kUnits inputs of x) holds, for every gate
  // column n, its kUnits weights, [4H][kUnits]; this thread's dh blocks first, then its dx blocks.
  Scratch panels(static_cast<size_t>(own + inputs) * G * kUnits, H % kUnits != 0 || I % kUnits != 0);
  auto pack = [&](int slot, const float* w, int first, int count) {
    for (int n = 0; n < G; ++n)  // writes in order; the reads are count sequential streams
      for (int j = 0; j < count; ++j)
        panels[(static_cast<size_t>(slot) * G + n) * kUnits + j] = w[static_cast<size_t>(first + j) * G + n];
  };
  for (int u = u0; u < u1; ++u) pack(u - u0, w_hh, u * kUnits, s.units(u));
  for (int i = i0; i < i1; ++i) pack(own + i - i0, w_ih, i * kUnits, std::min(kUnits, I - i * kUnits));
  // This thread's columns of dW_ih, dW_hh and db, as [rows][kColumns] per unit block.
  const int gradient_rows = weight_grads ? own : 0;
  // Not zeroed: the first update writes them (outer_tile); zeroed only where there is none (T = 0).
  Scratch dw_ih(static_cast<size_t>(gradient_rows) * I * kColumns, T == 0);
  Scratch dw_hh(static_cast<size_t>(gradient_rows) * H * kColumns, T == 0);
  Scratch db(gradient_rows * kColumns);
  // Where the thread's dW panels outgrow half its core's L2 (4 MB at I = H = 512 on two threads, 2-3 MB for one
  // direction of a bidirectional layer), the weight-gradient update runs once per kGradientSteps steps, over all
  // their rows: updated every step, the panels streamed in and out of L3 every step, and the update took 1.1-1.3x
  // as long (per-phase timers; blocks of 2 steps gained most of it, of 8 less than 4). dx is then formed for the
  // same blocks of steps, its panels too passing through the caches once per block (bidirectional, I = 512: dx
  // 0.74x the time, dh beside it 0.90x). So the blocks are used wherever dx is formed (two layers, I = H = 256:
  // training 0.97-0.99x the time) or the dW panels outgrow the caches; a one-layer step at I = H = 256, with
  // neither, took 0.99-1.04x as long in blocks of 4 (same-process A/Bs), and stays per step.
  // Decided for the group's largest share, so that all its threads agree (they share the dz buffers).
  const size_t gradient_panel_bytes =
      static_cast<size_t>((s.blocks() + P - 1) / P) * (I + H) * kColumns * sizeof(float);
  const bool blocked = input_blocks > 0 || (weight_grads && gradient_panel_bytes > l2_bytes() / 2);
  const int S = s.gradient_steps > 0 ? s.gradient_steps : blocked ? kGradientSteps : 1;
  Scratch dz_own(static_cast<size_t>(own) * S * B * kColumns, false);  // dz of this thread's blocks, S steps
  // state = [dh, dc (B x Hp each), a ring of dz buffers (B x 4H each, one after the other)], shared by the group.
  float* dh = state[0].data();
  float* dc = state[1].data();
  // dz_t is read by phase 2 of its step and, for dx, during the next step (S = 1), while the fastest thread may
  // already write dz of the step after that: three buffers. With S > 1, dx is formed for a whole block of S steps
  // during the first step of the next block, from the block's S buffers side by side, while the next block fills
  // the other S: 2S buffers.
  const int ring = S == 1 ? 3 : 2 * S;
  auto dz_buffer = [&](int step) { return state[2].data() + static_cast<size_t>(step % ring) * B * G; };
  for (int row = 0; row < B; ++row)
    for (int u = u0; u < u1; ++u) {
      const int n = s.units(u), offset = row * Hp + u * kUnits;
      std::memcpy(dh + offset, dh_last + row * H + u * kUnits, sizeof(float) * n);
      std::memcpy(dc + offset, dc_last + row * H + u * kUnits, sizeof(float) * n);
    }
  std::vector<const float*> x_rows(S * B), h_rows(S * B);
  // Phase 2: [dh_{t-1} | dx_t] = dz_t @ [W_hh; W_ih]^T for this thread's output blocks, up to four per tile. Each
  // tile runs over all 4H columns of dz_t at once, its sums staying in registers: in 128-column chunks (so that a
  // chunk of the panels stayed in L1 for all row tiles), saving and reloading the partial sums, the dh part took
  // 1.07-1.19x and the dx part 1.12-1.18x as long (I = H = 256 and 512, bidirectional, per-phase timers). The
  // panels now pass through L1 once per row tile; with one thread per direction, whose panels do not fit its L2,
  // the weight-gradient update beside it took 1.03-1.07x as long for that, less than the projections gained.
  // z: the dz rows of `steps` consecutive steps from `first_step` on (steps = 1 for dh).
  auto time_of = [&](int step) { return reverse ? step : T - 1 - step; };
  auto project = [&](const float* z, int first_step, int steps, int slots_begin, int slots_end, bool hidden) {
    const int rows = steps * B;
    for (int first = slots_begin; first < slots_end; first += 4) {
      const int nv = std::min(4, slots_end - first);
      const float* cols[4];
      for (int v = 0; v < nv; ++v) cols[v] = &panels[static_cast<size_t>(first + v) * G * kUnits];
      for (int r0 = 0, mr = 0; r0 < rows; r0 += mr) {
        mr = tile_height(rows - r0);
        vec acc[kRows][4];
        for (int r = 0; r < mr; ++r)
          for (int v = 0; v < nv; ++v) acc[r][v] = splat(0.f);
        tile_any(mr, nv, z + static_cast<size_t>(r0) * G, G, G, cols, kUnits, acc);
        int step = first_step + r0 / B, row = r0 % B;  // of the tile's first row; a tile may span two steps
        for (int r = 0; r < mr; ++r, ++row) {
          if (row == B) row = 0, ++step;
          const int t = time_of(step);
          if (hidden) {  // dh of an invalid row passes through unchanged
            if (lengths == nullptr || t < lengths[row])
              for (int v = 0; v < nv; ++v) store(dh + row * Hp + (u0 + first + v) * kUnits, acc[r][v]);
          } else {
            float* dx = d_xs + (static_cast<size_t>(t) * B + row) * I;
            for (int v = 0; v < nv; ++v) {
              const int block = i0 + first + v - own;
              store_n(dx + block * kUnits, acc[r][v], std::min(kUnits, I - block * kUnits));
            }
          }
        }
      }
    }
  };
  for (int step = 0; step < T; ++step) {
    const int t = reverse ? step : T - 1 - step;
    const int t_before = reverse ? t + 1 : t - 1;  // the step this one started from
    const bool first_step = t_before < 0 || t_before >= T;
    float* z_t = dz_buffer(step);
    // Phase 1: dz_t and dc_{t-1} for this thread's units.
    for (int row = 0; row < B; ++row) {
      const bool valid = lengths == nullptr || t < lengths[row];
      const size_t at = static_cast<size_t>(t) * B + row;
      const int slot = (step % S) * B + row;
      x_rows[slot] = xs + at * I;
      // h_{t-1}: the output of the step before where that step ran, else the initial state (see _h_previous).
      const bool ran_before = !first_step && (lengths == nullptr || t_before < lengths[row]);
      h_rows[slot] = ran_before ? ys + (static_cast<size_t>(t_before) * B + row) * ys_stride : h0 + row * H;
      for (int u = u0; u < u1; ++u) {
        const int n = s.units(u), unit = u * kUnits;
        float* z = z_t + row * G + unit;
        float* z_own = &dz_own[(static_cast<size_t>(u - u0) * S * B + slot) * kColumns];
        if (!valid) {  // dh and dc pass through; nothing reaches the weights
          for (int q = 0; q < 4; ++q) {
            store_n(z + q * H, splat(0.f), n);
            store(z_own + q * kUnits, splat(0.f));
          }
          continue;
        }
        const float* a = acts + at * G + unit;
        const vec i = load_n(a, n), f = load_n(a + H, n), g = load_n(a + 2 * H, n), o = load_n(a + 3 * H, n);
        const vec c = load_n(cs + at * H + unit, n);
        const vec c_before = load_n(first_step ? c0 + row * H + unit : cs + (static_cast<size_t>(t_before) * B + row) * H + unit, n);
        const vec tanh_c = vtanh(c);
        const vec dh_total = load(dh + row * Hp + unit) + load_n(d_ys + at * ys_stride + unit, n);
        const vec dc_total = load(dc + row * Hp + unit) + dh_total * o * (1.f - tanh_c * tanh_c);
        const vec dz_gates[4] = {dc_total * g * i * (1.f - i), dc_total * c_before * f * (1.f - f),
                                 dc_total * i * (1.f - g * g), dh_total * tanh_c * o * (1.f - o)};
        for (int q = 0; q < 4; ++q) {
          store_n(z + q * H, dz_gates[q], n);
          store(z_own + q * kUnits, dz_gates[q]);  // lanes past n are zero: load_n zero-fills
        }
        store(dc + row * Hp + unit, dc_total * f);
      }
    }
    // dz_t of this thread's units is written: arrive, then do what needs no other thread's dz_t while the others
    // finish theirs (a fuzzy barrier): the weight-gradient update and the dx of the previous step (or of the
    // previous block of S steps).
    const int generation = barrier.arrive();
    // dW[:, own columns] += [x_t, h_{t-1}]^T dz_t and db += sum dz_t over the rows of the block's steps.
    const bool block_done = step % S == S - 1 || step == T - 1;
    const int block_rows = (step % S + 1) * B;
    for (int u = u0; weight_grads && block_done && u < u1; ++u) {
      const float* z = &dz_own[static_cast<size_t>(u - u0) * S * B * kColumns];
      const bool first = step < S;
      accumulate_outer(x_rows.data(), I, block_rows, z, &dw_ih[static_cast<size_t>(u - u0) * I * kColumns], first);
      accumulate_outer(h_rows.data(), H, block_rows, z, &dw_hh[static_cast<size_t>(u - u0) * H * kColumns], first);
      for (int row = 0; row < block_rows; ++row)
        for (int q = 0; q < 4; ++q) {
          float* sum = &db[(u - u0) * kColumns + q * kUnits];
          store(sum, load(sum) + load(z + row * kColumns + q * kUnits));
        }
    }
    if (step > 0 && step % S == 0) project(dz_buffer(step - S), step - S, S, own, own + inputs, false);
    barrier.wait(generation);
    project(z_t, step, 1, 0, own, true);
    // No second barrier: the next phase 1 reads only this thread's units of dh and dc, and writes another dz buffer.
  }
  if (T > 0) {  // dx of the last block of steps
    const int last_block = (T - 1) / S * S;
    project(dz_buffer(last_block), last_block, T - last_block, own, own + inputs, false);
  }
  for (int row = 0; row < B; ++row)
    for (int u = u0; u < u1; ++u) {
      const int n = s.units(u), offset = row * Hp + u * kUnits;
      std::memcpy(dh0 + row * H + u * kUnits, dh + offset, sizeof(float) * n);
      std::memcpy(dc0 + row * H + u * kUnits, dc + offset, sizeof(float) * n);
    }
  // This thread's columns of the weight gradients, to (rows, 4H), row by row: one row's kUnits columns of a gate are
  // one vector store, and rows lie 4H floats apart, so walking down a column block instead sent every store of a
  // block to the same L1 set (memcpy of those pieces was an eighth of a T = 16 training step in perf).
  // The lines of the row two ahead are requested for writing (prefetchw) before each row is stored: every row of
  // the output starts a new 4 KiB page here (4H floats), in runs of kUnits floats per thread and gate too short for the
  // hardware prefetchers, so the stores waited for each line in turn. Per-phase timers, two layers at T = 16: the
  // unpacking took 245-254 against 287-330 us per thread and step (4 or 8 rows ahead, or prefetching for reading
  // into L2 or L1, gained less or nothing). That is ~60 us of a two-layer step of ~11 ms: whole training
  // steps took 0.99-1.00x the time in same-process A/Bs (one and two layers, bidirectional, I = H = 512), within
  // their noise.
  auto unpack = [&](const float* panel, int rows, float* out) {
    constexpr int kAhead = 2;
    for (int k = 0; k < rows; ++k) {
      if (k + kAhead < rows)
        for (int q = 0; q < 4; ++q)
          for (int u = u0; u < u1; ++u)
            __builtin_prefetch(out + static_cast<size_t>(k + kAhead) * G + q * H + u * kUnits, 1, 3);
      for (int u = u0; u < u1; ++u)
        for (int q = 0; q < 4; ++q)
          store_n(out + static_cast<size_t>(k) * G + q * H + u * kUnits,
                  load(panel + (static_cast<size_t>(u - u0) * rows + k) * kColumns + q * kUnits), s.units(u));
    }
  };
  if (weight_grads) {
    unpack(dw_ih.data(), I, d_w_ih);
    unpack(dw_hh.data(), H, d_w_hh);
    unpack(db.data(), 1, d_b_ih);  // both biases have the same gradient: written twice rather than copied in XLA
    unpack(db.data(), 1, d_b_hh);
  }
}

std::string dims_text(ffi::Span<const int64_t> dims) {
  std::string text = "(";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + ")";
}

// Checks that a buffer has exactly the expected dimensions; the Python side builds them, so a mismatch is a bug.
bool has_dims(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> expected) {
  return dims.size() == expected.size() && std::equal(dims.begin(), dims.end(), expected.begin());
}

// Whether the weights of D = 1 or 2 directions, one buffer per direction and kind, have the layer's shapes.
bool weights_fit(int64_t D, int64_t I, int64_t H, ffi::Buffer<ffi::F32>& w_ih_0, ffi::Buffer<ffi::F32>& w_ih_1,
                 ffi::Buffer<ffi::F32>& w_hh_0, ffi::Buffer<ffi::F32>& w_hh_1) {
  bool fit = D == 1 || D == 2;
  for (auto* w : {&w_ih_0, &w_ih_1}) fit = fit && has_dims(w->dimensions(), {I, 4 * H});
  for (auto* w : {&w_hh_0, &w_hh_1}) fit = fit && has_dims(w->dimensions(), {H, 4 * H});
  return fit;
}

// A call that fails before it starts (the handlers return futures: the work may finish after the handler returns).
ffi::Future failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

// The weights come one buffer per direction (the second is the first again for one direction), and the outputs of
// both directions share one (T, B, D·H) buffer, each direction writing its H columns of every row: so neither the
// weights of a bidirectional layer nor its outputs are copied into stacked arrays around the call (in XLA, those
// copies and the unstacking of the weight gradients took ~2 ms of a 35 ms two-layer bidirectional training step at
// T = 16).
ffi::Future Forward(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih_0, ffi::Buffer<ffi::F32> w_ih_1,
                   ffi::Buffer<ffi::F32> w_hh_0, ffi::Buffer<ffi::F32> w_hh_1, ffi::Buffer<ffi::F32> b_ih_0,
                   ffi::Buffer<ffi::F32> b_ih_1, ffi::Buffer<ffi::F32> b_hh_0, ffi::Buffer<ffi::F32> b_hh_1,
                   ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_last,
                   ffi::ResultBuffer<ffi::F32> c_last, ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> acts,
                   int64_t reverse_bits, bool masked, int64_t threads, int64_t input_steps, ffi::ThreadPool xla_pool) {
  if (xs.dimensions().size() != 3 || h0.dimensions().size() != 3)
    return failed(ffi::Error::InvalidArgument("lstm_jax kernel: xs must be (T, B, I) and h0 (D, B, H)"));
  const int64_t T = xs.dimensions()[0], B = xs.dimensions()[1], I = xs.dimensions()[2];
  const int64_t D = h0.dimensions()[0], H = h0.dimensions()[2];
  const bool save = cs->element_count() > 0;
  bool biases_fit = true;
  for (auto* bias : {&b_ih_0, &b_ih_1, &b_hh_0, &b_hh_1})
    biases_fit = biases_fit && has_dims(bias->dimensions(), {4 * H});
  if (!weights_fit(D, I, H, w_ih_0, w_ih_1, w_hh_0, w_hh_1) || !biases_fit || !has_dims(h0.dimensions(), {D, B, H}) ||
      !has_dims(c0.dimensions(), {D, B, H}) || !has_dims(lengths.dimensions(), {B}) || !has_dims(ys->dimensions(), {T, B, D * H}) ||
      (save && (!has_dims(cs->dimensions(), {D, T, B, H}) || !has_dims(acts->dimensions(), {D, T, B, 4 * H}))))
    return failed(ffi::Error::InvalidArgument("lstm_jax kernel: inconsistent shapes, xs " +
                                              dims_text(xs.dimensions()) + " h0 " + dims_text(h0.dimensions()) +
                                              " w_hh " + dims_text(w_hh_0.dimensions())));
  const Shape s{static_cast<int>(T), static_cast<int>(B), static_cast<int>(I), static_cast<int>(H),
                static_cast<int>(input_steps)};
  std::vector<Scratch> state;  // per direction: two h buffers and c
  state.reserve(D * 3);
  for (int64_t i = 0; i < D * 3; ++i) state.emplace_back(static_cast<size_t>(B) * s.padded());
  const size_t seq = static_cast<size_t>(T) * B * H, one = static_cast<size_t>(B) * H;
  // The work may outlive this call: it holds the buffers' addresses (XLA keeps them until the future completes)
  // and the scratch state, not the handler's arguments.
  const float* w_ih[2] = {w_ih_0.typed_data(), w_ih_1.typed_data()};
  const float* w_hh[2] = {w_hh_0.typed_data(), w_hh_1.typed_data()};
  const float* b_ih[2] = {b_ih_0.typed_data(), b_ih_1.typed_data()};
  const float* b_hh[2] = {b_hh_0.typed_data(), b_hh_1.typed_data()};
  auto work = [=, x = xs.typed_data(), h_0 = h0.typed_data(), c_0 = c0.typed_data(),
               length = masked ? lengths.typed_data() : nullptr, y = ys->typed_data(), h_T = h_last->typed_data(),
               c_T = c_last->typed_data(), c = save ? cs->typed_data() : nullptr,
               a = save ? acts->typed_data() : nullptr,
               state = std::move(state)](int d, int p, int P, Barrier& barrier) mutable {
    // ys is shared: each participant maps in its share of all of it (with groups of unequal size the shares
    // overlap or leave gaps, which only costs speed).
    prefault(y, sizeof(float) * D * seq, d * P + p, static_cast<int>(D) * P);
    if (save) {
      prefault(c + d * seq, sizeof(float) * seq, p, P);
      prefault(a + d * 4 * seq, sizeof(float) * 4 * seq, p, P);
    }
    forward_direction(s, p, P, barrier, (reverse_bits >> d) & 1, length, x, w_ih[d], w_hh[d], b_ih[d], b_hh[d],
                      h_0 + d * one, c_0 + d * one, y + d * H, D * H, h_T + d * one, c_T + d * one,
                      save ? c + d * seq : nullptr, save ? a + d * 4 * seq : nullptr, &state[d * 3]);
  };
  return run_threads(D, static_cast<int>(threads), s.blocks(), &xla_pool, /*hand_off=*/save, std::move(work));
}

ffi::Future Backward(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih_0, ffi::Buffer<ffi::F32> w_ih_1,
                    ffi::Buffer<ffi::F32> w_hh_0, ffi::Buffer<ffi::F32> w_hh_1, ffi::Buffer<ffi::F32> h0,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> d_ys, ffi::Buffer<ffi::F32> dh_last,
                    ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> d_xs,
                    ffi::ResultBuffer<ffi::F32> d_w_ih_0, ffi::ResultBuffer<ffi::F32> d_w_ih_1,
                    ffi::ResultBuffer<ffi::F32> d_w_hh_0, ffi::ResultBuffer<ffi::F32> d_w_hh_1,
                    ffi::ResultBuffer<ffi::F32> d_b_ih_0, ffi::ResultBuffer<ffi::F32> d_b_ih_1,
                    ffi::ResultBuffer<ffi::F32> d_b_hh_0, ffi::ResultBuffer<ffi::F32> d_b_hh_1,
                    ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0, int64_t reverse_bits, bool masked,
                    int64_t threads, int64_t gradient_steps, ffi::ThreadPool xla_pool) {
  if (xs.dimensions().size() != 3 || h0.dimensions().size() != 3)
    return failed(ffi::Error::InvalidArgument("lstm_jax kernel: xs must be (T, B, I) and h0 (D, B, H)"));
  const int64_t T = xs.dimensions()[0], B = xs.dimensions()[1], I = xs.dimensions()[2];
  const int64_t D = h0.dimensions()[0], H = h0.dimensions()[2];
  for (auto* sequence : {&ys, &d_ys})
    if (!has_dims(sequence->dimensions(), {T, B, D * H}))
      return failed(ffi::Error::InvalidArgument("lstm_jax kernel: ys and its cotangent must be (T, B, D·H)"));
  for (auto* one : {&h0, &c0, &dh_last, &dc_last})
    if (!has_dims(one->dimensions(), {D, B, H}))
      return failed(ffi::Error::InvalidArgument("lstm_jax kernel: states must be (D, B, H)"));
  if (!weights_fit(D, I, H, w_ih_0, w_ih_1, w_hh_0, w_hh_1) || !has_dims(cs.dimensions(), {D, T, B, H}) || !has_dims(acts.dimensions(), {D, T, B, 4 * H}) ||
      !has_dims(lengths.dimensions(), {B}))
    return failed(ffi::Error::InvalidArgument("lstm_jax kernel: inconsistent shapes, xs " + dims_text(xs.dimensions()) +
                                       " h0 " + dims_text(h0.dimensions()) + " w_hh " + dims_text(w_hh_0.dimensions())));
  // Empty outputs: that gradient is not wanted (and a second direction's are always empty for one direction).
  ffi::ResultBuffer<ffi::F32>* d_w_ih[2] = {&d_w_ih_0, &d_w_ih_1};
  ffi::ResultBuffer<ffi::F32>* d_w_hh[2] = {&d_w_hh_0, &d_w_hh_1};
  ffi::ResultBuffer<ffi::F32>* d_b_ih[2] = {&d_b_ih_0, &d_b_ih_1};
  ffi::ResultBuffer<ffi::F32>* d_b_hh[2] = {&d_b_hh_0, &d_b_hh_1};
  const bool input_grad = d_xs->element_count() > 0, weight_grad = d_w_ih_0->element_count() > 0;
  bool gradients_fit = !input_grad || has_dims(d_xs->dimensions(), {D, T, B, I});
  for (int64_t d = 0; d < 2; ++d) {
    const bool wanted = weight_grad && d < D;
    gradients_fit = gradients_fit &&
                    (wanted ? has_dims((*d_w_ih[d])->dimensions(), {I, 4 * H}) &&
                                  has_dims((*d_w_hh[d])->dimensions(), {H, 4 * H}) &&
                                  has_dims((*d_b_ih[d])->dimensions(), {4 * H}) &&
                                  has_dims((*d_b_hh[d])->dimensions(), {4 * H})
                            : (*d_w_ih[d])->element_count() == 0 && (*d_w_hh[d])->element_count() == 0 &&
                                  (*d_b_ih[d])->element_count() == 0 && (*d_b_hh[d])->element_count() == 0);
  }
  if (!gradients_fit)
    return failed(ffi::Error::InvalidArgument("lstm_jax kernel: gradient outputs must be empty or match the inputs"));
  const Shape s{static_cast<int>(T), static_cast<int>(B), static_cast<int>(I), static_cast<int>(H), 0,
                static_cast<int>(gradient_steps)};
  std::vector<Scratch> state;
  state.reserve(D * 3);
  for (int64_t d = 0; d < D; ++d) {
    state.emplace_back(static_cast<size_t>(B) * s.padded());  // dh
    state.emplace_back(static_cast<size_t>(B) * s.padded());  // dc
    // The ring of dz buffers, as many as the backward's blocks of steps can need (backward_direction).
    const int ring = 2 * std::max<int>(kGradientSteps, static_cast<int>(gradient_steps));
    state.emplace_back(static_cast<size_t>(std::max(3, ring)) * B * 4 * H, false);  // written before it is read
  }
  const size_t seq = static_cast<size_t>(T) * B * H, one = static_cast<size_t>(B) * H;
  const size_t input_seq = static_cast<size_t>(T) * B * I;
  // As in Forward: the work holds addresses and its scratch state, not the handler's arguments.
  const float* w_ih[2] = {w_ih_0.typed_data(), w_ih_1.typed_data()};
  const float* w_hh[2] = {w_hh_0.typed_data(), w_hh_1.typed_data()};
  float* dw_ih[2] = {nullptr, nullptr};
  float* dw_hh[2] = {nullptr, nullptr};
  float* db_ih[2] = {nullptr, nullptr};
  float* db_hh[2] = {nullptr, nullptr};
  for (int64_t d = 0; weight_grad && d < D; ++d) {
    dw_ih[d] = (*d_w_ih[d])->typed_data();
    dw_hh[d] = (*d_w_hh[d])->typed_data();
    db_ih[d] = (*d_b_ih[d])->typed_data();
    db_hh[d] = (*d_b_hh[d])->typed_data();
  }
  auto work = [=, x = xs.typed_data(), h_0 = h0.typed_data(), c_0 = c0.typed_data(),
               length = masked ? lengths.typed_data() : nullptr, y = ys.typed_data(), c = cs.typed_data(),
               a = acts.typed_data(), dy = d_ys.typed_data(), dh_T = dh_last.typed_data(),
               dc_T = dc_last.typed_data(), dx = input_grad ? d_xs->typed_data() : nullptr,
               dh_0 = dh0->typed_data(), dc_0 = dc0->typed_data(),
               state = std::move(state)](int d, int p, int P, Barrier& barrier) mutable {
    if (dx != nullptr) prefault(dx + d * input_seq, sizeof(float) * input_seq, p, P);
    backward_direction(s, p, P, barrier, (reverse_bits >> d) & 1, length, x, w_ih[d], w_hh[d], h_0 + d * one,
                       c_0 + d * one, y + d * H, D * H, a + d * 4 * seq, c + d * seq, dy + d * H, dh_T + d * one,
                       dc_T + d * one, dx != nullptr ? dx + d * input_seq : nullptr, dw_ih[d], dw_hh[d], db_ih[d], db_hh[d],
                       dh_0 + d * one, dc_0 + d * one, &state[d * 3]);
  };
  return run_threads(D, static_cast<int>(threads), s.blocks(), &xla_pool, /*hand_off=*/true, std::move(work));
}

}  // namespace

// Hidden units per block, the register tiles' vector width (the status line and the tests read it).
extern "C" int LstmJaxUnits() { return kUnits; }

// For the tests: prefault() of part `part` of `parts` of a buffer.
extern "C" void LstmJaxPrefault(void* data, int64_t bytes, int part, int parts) {
  prefault(data, static_cast<size_t>(bytes), part, parts);
}

// For the tests: how far past a 64-byte boundary scratch buffers of `floats` floats start (the largest offset of
// three taken at once, so that they are distinct buffers of the pool). 0 is what the vector loads rely on.
extern "C" int LstmJaxScratchMisalignment(int64_t floats) {
  Scratch a(static_cast<size_t>(floats)), b(static_cast<size_t>(floats) + 1), c(static_cast<size_t>(floats) * 2, false);
  int worst = 0;
  for (float* data : {a.data(), b.data(), c.data()})
    worst = std::max(worst, static_cast<int>(reinterpret_cast<uintptr_t>(data) % LineAligned<float>::kAlignment));
  return worst;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (T, B, I)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih (I, 4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih, direction 1 (direction 0's again if D = 1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh (H, 4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh, direction 1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_ih (4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_ih, direction 1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hh (4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hh, direction 1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (D, B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (D, B, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (B,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys (T, B, D·H): direction d in columns d·H ...
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T (D, B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_T (D, B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs (D, T, B, H), or empty: not saved
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gate activations (D, T, B, 4H), or empty
                                  .Attr<int64_t>("reverse_bits")
                                  .Attr<bool>("masked")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("input_steps")  // 0: chosen by the kernel
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (T, B, I)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih (I, 4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih, direction 1 (direction 0's again if D = 1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh (H, 4H), direction 0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh, direction 1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (D, B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (D, B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys (T, B, D·H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs (D, T, B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gate activations (D, T, B, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d ys (T, B, D·H), zero at invalid steps
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d h_T (D, B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d c_T (D, B, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (B,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d xs per direction (D, T, B, I), or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d w_ih (I, 4H), direction 0, or empty: no weight grads
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d w_ih, direction 1, or empty (always for D = 1)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d w_hh (H, 4H), direction 0, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d w_hh, direction 1, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d b_ih (4H), direction 0, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d b_ih, direction 1, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d b_hh (4H), direction 0, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d b_hh, direction 1, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d h0 (D, B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d c0 (D, B, H)
                                  .Attr<int64_t>("reverse_bits")
                                  .Attr<bool>("masked")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("gradient_steps")  // 0: chosen by the kernel
                                  .Ctx<ffi::ThreadPool>());
