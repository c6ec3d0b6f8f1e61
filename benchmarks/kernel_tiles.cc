// The CPU kernel's matmul loops timed alone: each thread runs one of them over and over on its own data (reused
// from run to run, so it stays in the core's caches wherever it fits), every thread busy at once as in the kernel.
// What this measures is the most each phase of lstm_cpu.cc could reach if nothing but its register tiles cost
// anything; the kernel's phases, timed inside a training step, run below it by what memory and the other threads
// add. benchmarks/kernel_tiles.py builds
// and runs it; the loops below are the kernel's own (this file includes lstm_cpu.cc), set up the way its phases
// call them.
//
// usage: kernel_tiles B I H THREADS SECONDS   -> one JSON object per line on stdout

#include "lstm_cpu.cc"

#include <cmath>
#include <cstdio>
#include <functional>

namespace {

// A thread's share of a layer's hidden units, in blocks of kUnits, as the kernel splits them.
int own_blocks(int H, int threads) { return ((H + kUnits - 1) / kUnits + threads - 1) / threads; }

struct Problem {
  int B, I, H, blocks;  // blocks: this thread's unit blocks
};

// Deterministic small values, so that sums stay finite however often a loop runs.
void fill(FloatBuffer& buffer, int seed) {
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = 0.01f * static_cast<float>((i * 7 + seed) % 13) - 0.06f;
}

// One loop of the kernel, ready to run: `run` does it once, `flops` counts its multiply-adds twice, `check`
// compares its result with a plain double-precision loop (the largest relative error).
struct Loop {
  std::string name, shape;
  double flops;
  std::function<void()> run;
  std::function<double()> check;
};

// The forward's x_t W_ih part (input_part, per unit block): a (rows, I) slice times each unit block's (I, kColumns)
// panel.
// rows: one step's B, or the 4B of a block of 4 steps, which the kernel uses where a thread's panels fill half its L2
// or more.
Loop forward_input(const Problem& p, int rows) {
  auto x = std::make_shared<FloatBuffer>(static_cast<size_t>(rows) * p.I);
  auto panels = std::make_shared<FloatBuffer>(static_cast<size_t>(p.blocks) * p.I * kColumns);
  auto bias = std::make_shared<FloatBuffer>(kColumns);
  auto z = std::make_shared<FloatBuffer>(static_cast<size_t>(p.blocks) * rows * kColumns);
  fill(*x, 1), fill(*panels, 2), fill(*bias, 3);
  const int I = p.I, blocks = p.blocks;
  auto run = [=] {
    for (int u = 0; u < blocks; ++u)
      input_part(x->data(), rows, I, panels->data() + static_cast<size_t>(u) * I * kColumns, bias->data(),
                 z->data() + static_cast<size_t>(u) * rows * kColumns);
  };
  auto check = [=] {
    run();
    double worst = 0;
    for (int r = 0; r < rows; r += 7)
      for (int c = 0; c < kColumns; c += 5) {
        double sum = (*bias)[c];
        for (int k = 0; k < I; ++k) sum += static_cast<double>((*x)[r * I + k]) * (*panels)[k * kColumns + c];
        worst = std::max(worst, std::abs((*z)[r * kColumns + c] - sum) / (std::abs(sum) + 1e-3));
      }
    return worst;
  };
  return {rows == p.B ? "forward x W_ih, 1 step" : "forward x W_ih, 4 steps",
          std::to_string(rows) + " x " + std::to_string(I) + " by (" + std::to_string(I) + ", " +
              std::to_string(kColumns) + ")",
          2.0 * rows * I * kColumns * blocks, run, check};
}

// The backward's weight-gradient update (accumulate_outer): [x_t, h_{t-1}]^T dz_t added into each unit block's
// (I + H, kColumns) panels, a contraction over `rows` batch rows (one step: B; a block of 4 steps: 4B).
Loop weight_gradient(const Problem& p, int rows) {
  auto x = std::make_shared<FloatBuffer>(static_cast<size_t>(rows) * p.I);
  auto h = std::make_shared<FloatBuffer>(static_cast<size_t>(rows) * p.H);
  auto dz = std::make_shared<FloatBuffer>(static_cast<size_t>(p.blocks) * rows * kColumns);
  auto dw_ih = std::make_shared<FloatBuffer>(static_cast<size_t>(p.blocks) * p.I * kColumns);
  auto dw_hh = std::make_shared<FloatBuffer>(static_cast<size_t>(p.blocks) * p.H * kColumns);
  fill(*x, 4), fill(*h, 5), fill(*dz, 6);
  // [x_t, h_{t-1}] through one pointer per row, as the kernel reads them (its rows lie in different buffers).
  auto x_rows = std::make_shared<std::vector<const float*>>(rows);
  auto h_rows = std::make_shared<std::vector<const float*>>(rows);
  for (int b = 0; b < rows; ++b) {
    (*x_rows)[b] = x->data() + static_cast<size_t>(b) * p.I;
    (*h_rows)[b] = h->data() + static_cast<size_t>(b) * p.H;
  }
  const int I = p.I, H = p.H, blocks = p.blocks;
  auto update = [=](bool first) {
    for (int u = 0; u < blocks; ++u) {
      const float* z = dz->data() + static_cast<size_t>(u) * rows * kColumns;
      accumulate_outer(x_rows->data(), I, rows, z, dw_ih->data() + static_cast<size_t>(u) * I * kColumns, first);
      accumulate_outer(h_rows->data(), H, rows, z, dw_hh->data() + static_cast<size_t>(u) * H * kColumns, first);
    }
  };
  auto check = [=] {
    update(true);
    double worst = 0;
    for (int k = 0; k < I + H; k += 3)
      for (int c = 0; c < kColumns; c += 5) {
        double sum = 0;
        for (int b = 0; b < rows; ++b) {
          const float a = k < I ? (*x)[b * I + k] : (*h)[b * H + k - I];
          sum += static_cast<double>(a) * (*dz)[b * kColumns + c];
        }
        const float got = k < I ? (*dw_ih)[k * kColumns + c] : (*dw_hh)[(k - I) * kColumns + c];
        worst = std::max(worst, std::abs(got - sum) / (std::abs(sum) + 1e-3));
      }
    return worst;
  };
  return {rows == p.B ? "dW update, 1 step" : "dW update, 4 steps",
          std::to_string(I + H) + " x " + std::to_string(kColumns) + " over " + std::to_string(rows) + " rows",
          2.0 * rows * (I + H) * kColumns * blocks, [=] { update(false); }, check};
}

// The backward's dh_{t-1} = dz_t W_hh^T part (project): each tile runs over all 4H columns of dz_t, (B, 4H) with
// rows 4H floats apart, against up to four unit blocks' [4H][kUnits] panels, its sums staying in registers.
Loop hidden_gradient(const Problem& p) {
  const int G = 4 * p.H, B = p.B, blocks = p.blocks;
  auto dz = std::make_shared<FloatBuffer>(static_cast<size_t>(B) * G);
  auto panels = std::make_shared<FloatBuffer>(static_cast<size_t>(blocks) * G * kUnits);
  auto dh = std::make_shared<FloatBuffer>(static_cast<size_t>(B) * blocks * kUnits);
  fill(*dz, 7), fill(*panels, 8);
  auto run = [=] {
    for (int first = 0; first < blocks; first += 4) {
      const int nv = std::min(4, blocks - first);
      const float* cols[4];
      for (int v = 0; v < nv; ++v) cols[v] = panels->data() + static_cast<size_t>(first + v) * G * kUnits;
      for (int r0 = 0, mr = 0; r0 < B; r0 += mr) {
        mr = tile_height(B - r0);
        vec acc[kRows][4];
        for (int r = 0; r < mr; ++r)
          for (int v = 0; v < nv; ++v) acc[r][v] = splat(0.f);
        tile_any(mr, nv, dz->data() + static_cast<size_t>(r0) * G, G, G, cols, kUnits, acc);
        for (int r = 0; r < mr; ++r)
          for (int v = 0; v < nv; ++v) store(dh->data() + (r0 + r) * blocks * kUnits + (first + v) * kUnits, acc[r][v]);
      }
    }
  };
  auto check = [=] {
    run();
    double worst = 0;
    for (int r = 0; r < B; r += 5)
      for (int j = 0; j < blocks * kUnits; j += 7) {
        double sum = 0;
        const float* panel = panels->data() + static_cast<size_t>(j / kUnits) * G * kUnits + j % kUnits;
        for (int n = 0; n < G; ++n) sum += static_cast<double>((*dz)[r * G + n]) * panel[n * kUnits];
        worst = std::max(worst, std::abs((*dh)[r * blocks * kUnits + j] - sum) / (std::abs(sum) + 1e-3));
      }
    return worst;
  };
  return {"backward dz W_hh^T",
          std::to_string(B) + " x " + std::to_string(G) + " by (" + std::to_string(G) + ", " + std::to_string(kUnits) +
              ")",
          2.0 * B * G * kUnits * blocks, run, check};
}

// Multiply-adds on registers only: as many independent accumulators as the tiles keep (kRows x 4).
Loop fma_peak() {
  constexpr int kAccumulators = kRows * 4;
  auto sink = std::make_shared<float>(0.f);
  auto run = [=] {
    vec acc[kAccumulators];
    for (int i = 0; i < kAccumulators; ++i) acc[i] = splat(0.001f * i);
    const vec a = splat(0.999f), b = splat(0.0001f);
    for (int k = 0; k < 4096; ++k) {
#pragma GCC unroll 24
      for (int i = 0; i < kAccumulators; ++i) acc[i] = acc[i] * a + b;
    }
    float s = 0;
    for (int i = 0; i < kAccumulators; ++i) s += acc[i][0];
    *sink += s;
  };
  return {"FMA peak", "registers only", 2.0 * 4096 * kAccumulators * kUnits, run, [] { return 0.0; }};
}

// Per thread: its best rate over timings of >= 2 ms, and its sustained rate, all its runs over all the time they
// took. The best is what a core reaches in its best moment (on a VM whose clock varies, above its usual rate); the
// sustained rates, added up over the threads, are what the cores deliver together.
struct Rates {
  std::vector<double> best, sustained;
};

// Runs the loop on every thread at once for about `seconds`: the threads start timing together, once each has
// made its data and run the loop once, and keep their cores busy until the last is done.
Rates rates(const std::function<Loop()>& make, int threads, double seconds) {
  Rates out{std::vector<double>(threads, 0.0), std::vector<double>(threads, 0.0)};
  std::atomic<int> ready{0}, arrived{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      Loop loop = make();  // each thread its own data, allocated (and first touched) by itself
      loop.run();
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      const auto start = std::chrono::steady_clock::now();
      double runs = 0;
      int repeats = 1;
      for (;;) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < repeats; ++i) loop.run();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        runs += repeats;
        if (s < 2e-3) {
          repeats *= 2;
          continue;
        }
        out.best[t] = std::max(out.best[t], loop.flops * repeats / s / 1e9);
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) break;
      }
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      out.sustained[t] = loop.flops * runs / elapsed / 1e9;
      arrived.fetch_add(1);
      while (arrived.load() < threads) std::this_thread::yield();  // keep the core busy until all are done
    });
  for (auto& thread : pool) thread.join();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s B I H THREADS SECONDS\n", argv[0]);
    return 2;
  }
  const int B = std::atoi(argv[1]), I = std::atoi(argv[2]), H = std::atoi(argv[3]), threads = std::atoi(argv[4]);
  const double seconds = std::atof(argv[5]);
  const Problem p{B, I, H, own_blocks(H, threads)};
  const std::vector<std::pair<std::string, std::function<Loop()>>> loops = {
      {"fma", [] { return fma_peak(); }},
      {"forward_input", [&] { return forward_input(p, B); }},
      {"forward_input_block", [&] { return forward_input(p, 4 * B); }},
      {"weight_gradient_step", [&] { return weight_gradient(p, B); }},
      {"weight_gradient_block", [&] { return weight_gradient(p, kGradientSteps * B); }},
      {"hidden_gradient", [&] { return hidden_gradient(p); }},
  };
  for (const auto& [key, make] : loops) {
    Loop probe = make();
    const double error = probe.check();
    const Rates per_thread = rates(make, threads, seconds);
    std::string best, sustained;
    for (double r : per_thread.best) best += (best.empty() ? "" : ", ") + std::to_string(r);
    for (double r : per_thread.sustained) sustained += (sustained.empty() ? "" : ", ") + std::to_string(r);
    std::printf("{\"key\": \"%s\", \"name\": \"%s\", \"shape\": \"%s\", \"flop\": %.0f, \"max_rel_error\": %.3g, "
                "\"gflops_per_thread\": [%s], \"sustained_gflops_per_thread\": [%s], \"units\": %d, "
                "\"tile_rows\": %d}\n",
                key.c_str(), probe.name.c_str(), probe.shape.c_str(), probe.flops, error, best.c_str(),
                sustained.c_str(), kUnits, kRows);
    std::fflush(stdout);
  }
  return 0;
}
