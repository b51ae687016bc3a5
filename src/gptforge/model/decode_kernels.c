/* The compiled kernels of decoding steps on CPUs (see native.py, which compiles and loads this file):
   int8 and float32 linear layers for a few rows, and one new query per row attending over its
   row's cached keys.

   Why: a decoding step multiplies a few rows by every weight, so its speed is how fast the
   weights stream from memory; each kernel here reads every weight row once for all the rows of x,
   on every thread, in one call instead of a dozen torch ops.

   The rule every kernel keeps: each output is computed in one fixed order that depends on nothing
   but its own inputs (not the number of rows, not the threads, not its neighbours), so a row
   decoded among strangers gets exactly the numbers it gets alone. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define AVX512 1
#else
#define AVX512 0
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define VNNI 1
#else
#define VNNI 0
#endif

#define CHUNK 8 /* rows of x per pass over the weights: their accumulators stay in registers */

/* This thread's contiguous block n0..n1 of N weight rows (one sequential stream from memory),
   inside a parallel region. */
static void thread_share(int N, int *n0, int *n1)
{
#ifdef _OPENMP
    int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    int t = 0, T = 1;
#endif
    *n0 = (int)((int64_t)N * t / T);
    *n1 = (int)((int64_t)N * (t + 1) / T);
}

/* A linear layer's passes over its weight: each thread its contiguous share of the `units` (weight
   rows or panels, `unit_bytes` each: one sequential stream from memory), a block of them at a time
   (~256 KB, a multiple of 16), and every chunk of up to CHUNK rows of x through a block while it
   is in the caches, so the weights stream from memory once however many rows there are (a prompt).
   pass(ctx, m0, R, u0, u1) computes rows m0..m0+R-1 of the output for units u0..u1-1. */
typedef void (*pass_fn)(const void *ctx, int m0, int R, int u0, int u1);

static void linear_passes(pass_fn pass, const void *ctx, int M, int units, int64_t unit_bytes, int threads)
{
    int block = (int)((256 << 10) / unit_bytes) / 16 * 16;
    block = block < 16 ? 16 : block;
#pragma omp parallel num_threads(threads)
    {
        int u0, u1;
        thread_share(units, &u0, &u1);
        for (int b0 = u0; b0 < u1; b0 += block)
            for (int m0 = 0; m0 < M; m0 += CHUNK)
                pass(ctx, m0, M - m0 < CHUNK ? M - m0 : CHUNK, b0, b0 + block < u1 ? b0 + block : u1);
    }
}

/* ---- int8 linear layers ----------------------------------------------------------------------

   y[m, n] = (sum_k qx[m, k] * w[n, k]) * (xs[m] * ws[n]) + bias[n], where each row of x is
   quantized here as Int8Linear does it in torch (xs = max|x| / 127, qx = x / xs rounded half to
   even). The integer sums are exact, and every float operation is the one torch does in the same
   order (compiled with -ffp-contract=off: no fused multiply-adds), so the result is the same, bit
   for bit, as Int8Linear's torch._int_mm path, whatever the number of rows.

   The weight comes as panels (Int8Linear.panels): panel p holds output rows 16p..16p+15, and for
   each group of 4 columns k..k+3 their 16 x 4 bytes side by side, w[p][k / 4][n % 16][k % 4] (rows
   past N and columns past K zero). One AVX-512 VNNI instruction then multiplies 4 columns of a row
   of x (broadcast) by 16 weight rows at once into 16 separate sums: no horizontal additions, and
   a row of x costs one instruction per 64 weight bytes, so several rows cost little more than one.
   Without VNNI a portable loop reads the same layout. */

#define PANEL 16

/* Rows of x quantized; ux (= q + 128: VNNI multiplies unsigned by signed bytes) padded to K4 * 4
   columns with 128 (q = 0). With AVX-512, 16 columns at a time: the same IEEE division and
   round-half-to-even as the scalar loop, so the same bytes. */
static void quantize_rows(const float *x, int M, int K, int K4, int8_t *qx, uint8_t *ux, float *xs)
{
    for (int m = 0; m < M; m++) {
        const float *row = x + (int64_t)m * K;
        int8_t *q = qx + (int64_t)m * 4 * K4;
        uint8_t *u = ux + (int64_t)m * 4 * K4;
        float amax = 0.0f;
        int k = 0, nan = 0;
#if AVX512
        __m512 top = _mm512_setzero_ps();
        for (; k + 16 <= K; k += 16) {
            __m512 v = _mm512_loadu_ps(row + k);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0;
            top = _mm512_max_ps(top, _mm512_abs_ps(v));
        }
        amax = _mm512_reduce_max_ps(top);
#endif
        for (; k < K; k++) {
            nan |= isnan(row[k]);
            amax = fmaxf(amax, fabsf(row[k]));
        }
        /* a NaN anywhere makes the scale NaN, as torch's amax does, and then every output NaN */
        float scale = nan ? NAN : fmaxf(amax, 1e-12f) / 127.0f;
        xs[m] = scale;
        k = 0;
#if AVX512
        if (!nan) {
            __m512 s = _mm512_set1_ps(scale);
            for (; k + 16 <= K; k += 16) {
                __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(row + k), s),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)); /* |r| <= 127 */
                _mm_storeu_si128((__m128i *)(q + k), b);
                _mm_storeu_si128((__m128i *)(u + k), _mm_add_epi8(b, _mm_set1_epi8((char)128)));
            }
        }
#endif
        for (; k < 4 * K4; k++) {
            float r = k < K && !nan ? nearbyintf(row[k] / scale) : 0.0f;
            q[k] = isnan(r) ? 0 : (int8_t)r; /* |r| <= 127, or NaN: an infinite x (inf / inf) */
            u[k] = (uint8_t)(q[k] + 128);
        }
    }
}

#if VNNI
/* The outputs of R rows x P panels from their int32 sums (R * P vectors of 16): (float)(sum - 128
   * wsum) * (xs[r] * ws[n]) + bias[n]. Out of line on purpose: inlined into panel_outputs, its
   registers made GCC 12 copy every accumulator twice per step of the loop there (two more
   instructions per dpbusd; one layer's 8 rows from the caches took 46.5 us for 43.9 now). */
static __attribute__((noinline)) void panel_scale(int R, int P, const int32_t *sums, const float *xs,
                                                 const int32_t *wsum, const float *ws, const float *bias, int N,
                                                 float *y, int p)
{
    for (int i = 0; i < R * P; i++) {
        int r = i / P, n = (p + i % P) * PANEL;
        __mmask16 live = N - n >= PANEL ? 0xFFFF : (__mmask16)((1u << (N - n)) - 1);
        /* (q + 128) . w counted 128 * sum(w) too many */
        __m512i sum = _mm512_sub_epi32(_mm512_loadu_si512((const void *)(sums + PANEL * i)),
                                       _mm512_slli_epi32(_mm512_loadu_si512((const void *)(wsum + n)), 7));
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(_mm512_set1_ps(xs[r]),
                                                                        _mm512_maskz_loadu_ps(live, ws + n)));
        if (bias)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, bias + n));
        _mm512_mask_storeu_ps(y + (int64_t)r * N + n, live, v);
    }
}
#endif

/* The outputs y[r][n] of R rows of x for P consecutive panels starting at panel p (R, P known at
   compile time in each copy below), each as torch computes it from its exact int32 sum:
   (float)sum * (xs[r] * ws[n]) + bias[n]. */
static inline __attribute__((always_inline)) void panel_outputs(
    int R, int P, int K4, const int8_t *qx, const uint8_t *ux, const float *xs, const int8_t *panels,
    const int32_t *wsum, const float *ws, const float *bias, int N, float *y, int p)
{
    const int8_t *w = panels + (int64_t)p * K4 * 64;
#if VNNI
    (void)qx;
    __m512i acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < R * P; i++)
        acc[i] = _mm512_setzero_si512();
    for (int k = 0; k < K4; k++) {
        __m512i wv[4];
#pragma GCC unroll 4
        for (int j = 0; j < P; j++)
            wv[j] = _mm512_loadu_si512((const void *)(w + ((int64_t)j * K4 + k) * 64));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t four;
            memcpy(&four, ux + (int64_t)r * 4 * K4 + 4 * k, 4);
            __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 4
            for (int j = 0; j < P; j++)
                acc[r * P + j] = _mm512_dpbusd_epi32(acc[r * P + j], xv, wv[j]);
        }
    }
    int32_t sums[16 * PANEL];
#pragma GCC unroll 16
    for (int i = 0; i < R * P; i++)
        _mm512_storeu_si512((void *)(sums + PANEL * i), acc[i]);
    panel_scale(R, P, sums, xs, wsum, ws, bias, N, y, p);
#else
    (void)ux;
    (void)wsum;
    for (int i = 0; i < R * P; i++) {
        const int8_t *xr = qx + (int64_t)(i / P) * 4 * K4, *panel = w + (int64_t)(i % P) * K4 * 64;
        for (int j = 0, n = (p + i % P) * PANEL; j < PANEL && n < N; j++, n++) {
            int32_t sum = 0;
            for (int k = 0; k < 4 * K4; k++)
                sum += (int32_t)xr[k] * (int32_t)panel[(k / 4) * 64 + j * 4 + k % 4];
            float v = (float)sum * (xs[i / P] * ws[n]);
            y[(int64_t)(i / P) * N + n] = bias ? v + bias[n] : v;
        }
    }
#endif
}

/* R rows over panels p0..p1, P panels at a time while they last, then one: OUTPUTS(R, P, p) computes
   panels p..p+P-1 (the int8 and the float32 kernels' panel_outputs). */
#define PANELS_CASE(R, P, OUTPUTS) case R: \
        for (int p = p0, step; p < p1; p += step) { \
            step = p + P <= p1 ? P : 1; \
            if (step == P) \
                OUTPUTS(R, P, p); \
            else \
                OUTPUTS(R, 1, p); \
        } \
        break;

#define INT8_OUTPUTS(R, P, p) panel_outputs(R, P, K4, qx, ux, xs, w, wsum, ws, bias, N, y, p)
#define PANEL_CASE(R, P) PANELS_CASE(R, P, INT8_OUTPUTS)

/* One pass of up to CHUNK rows over panels p0..p1. */
static void panels_pass(int R, int K4, const int8_t *qx, const uint8_t *ux, const float *xs, const int8_t *w,
                        const int32_t *wsum, const float *ws, const float *bias, int N, float *y, int p0, int p1)
{
    switch (R) {
        PANEL_CASE(1, 4) PANEL_CASE(2, 2) PANEL_CASE(3, 1) PANEL_CASE(4, 1)
        PANEL_CASE(5, 1) PANEL_CASE(6, 1) PANEL_CASE(7, 1) PANEL_CASE(8, 1)
    }
}

struct int8_pass {
    int K4;
    const int8_t *qx;
    const uint8_t *ux;
    const float *xs;
    const int8_t *w;
    const int32_t *wsum;
    const float *ws, *bias;
    int N;
    float *y;
};

static void int8_rows(const void *ctx, int m0, int R, int p0, int p1)
{
    const struct int8_pass *c = ctx;
    panels_pass(R, c->K4, c->qx + (int64_t)m0 * 4 * c->K4, c->ux + (int64_t)m0 * 4 * c->K4, c->xs + m0, c->w,
                c->wsum, c->ws, c->bias, c->N, c->y + (int64_t)m0 * c->N, p0, p1);
}

/* x: (M, K) float32; w: ceil(N / 16) panels of ceil(K / 4) * 64 bytes; wsum: (16 * panels,) each
   weight row's sum; ws: (N,) scales; bias: (N,) or NULL; y: (M, N) float32. Returns 0, or -1 when
   out of memory. */
int int8_linear(const float *x, int M, int K, const int8_t *w, const int32_t *wsum, const float *ws,
                const float *bias, int N, float *y, int threads)
{
    int K4 = (K + 3) / 4, panels = (N + PANEL - 1) / PANEL;
    int8_t *qx = malloc((size_t)M * 4 * K4);
    uint8_t *ux = malloc((size_t)M * 4 * K4);
    float *xs = malloc(sizeof(float) * (size_t)M);
    if (!qx || !ux || !xs) {
        free(qx), free(ux), free(xs);
        return -1;
    }
    quantize_rows(x, M, K, K4, qx, ux, xs);
    struct int8_pass ctx = {K4, qx, ux, xs, w, wsum, ws, bias, N, y};
    linear_passes(int8_rows, &ctx, M, panels, (int64_t)K4 * 64, threads);
    free(qx), free(ux), free(xs);
    return 0;
}

/* ---- float32 linear layers -------------------------------------------------------------------

   y[m, n] = sum_k x[m, k] * w[n, k] + bias[n], w row-major (N, K). Each sum runs in 16 lanes (lane
   l takes k = l, l + 16, ...), then the lanes are added in a fixed order, then the tail columns
   one by one: the same order for every output, however many rows and weight rows are computed
   together. R rows of x times NW weight rows at a time: R * NW accumulators in registers. One row
   of x reads the weight rows one after another, one sequential stream per thread, which the
   hardware prefetcher follows best: from huge pages, gpt2-124m's matrices took 16-18 ms this way
   against 19-20 with 8 weight rows at a time (benchmarks/README.md); more rows of x take several
   weight rows at a time, to keep enough sums in flight. */

#define LANES 16

/* The 16 lanes added as a tree (lane l + lane l + 8, then + 4, + 2, + 1): short dependency chains. */
static inline __attribute__((always_inline)) float lane_sum(float *lane)
{
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++)
            lane[l] += lane[l + width];
    return lane[0];
}

static inline __attribute__((always_inline)) void float_dots(
    int R, int NW, int K, const float *x, const float *w, float *out /* [R][NW] */)
{
    int k = 0;
#if AVX512
    __m512 acc[16]; /* R * NW <= 16 */
#pragma GCC unroll 16
    for (int i = 0; i < R * NW; i++)
        acc[i] = _mm512_setzero_ps();
    for (; k + LANES <= K; k += LANES)
#pragma GCC unroll 16
        for (int j = 0; j < NW; j++) {
            __m512 wv = _mm512_loadu_ps(w + (int64_t)j * K + k);
#pragma GCC unroll 16
            for (int r = 0; r < R; r++)
                acc[r * NW + j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + (int64_t)r * K + k), wv, acc[r * NW + j]);
        }
#pragma GCC unroll 16
    for (int i = 0; i < R * NW; i++)
        out[i] = _mm512_reduce_add_ps(acc[i]); /* a fixed tree of adds, as lane_sum */
#else
    float lanes[LANES];
    for (int i = 0; i < R * NW; i++) {
        const float *xr = x + (int64_t)(i / NW) * K, *wr = w + (int64_t)(i % NW) * K;
        for (int l = 0; l < LANES; l++)
            lanes[l] = 0.0f;
        for (k = 0; k + LANES <= K; k += LANES)
            for (int l = 0; l < LANES; l++)
                lanes[l] += xr[k + l] * wr[k + l];
        out[i] = lane_sum(lanes);
    }
#endif
    for (int i = 0; i < R * NW; i++)
        for (int t = k; t < K; t++)
            out[i] += x[(int64_t)(i / NW) * K + t] * w[(int64_t)(i % NW) * K + t];
}

/* NW weight rows at a time while they last, then one. */
#define FLOAT_CASE(R, NW) case R: { \
        int n = n0; \
        for (; n + NW <= n1; n += NW) { \
            float_dots(R, NW, K, x, w + (int64_t)n * K, out); \
            for (int i = 0; i < R * NW; i++) \
                y[(int64_t)(i / NW) * N + n + i % NW] = bias ? out[i] + bias[n + i % NW] : out[i]; \
        } \
        for (; n < n1; n++) { \
            float_dots(R, 1, K, x, w + (int64_t)n * K, out); \
            for (int r = 0; r < R; r++) \
                y[(int64_t)r * N + n] = bias ? out[r] + bias[n] : out[r]; \
        } \
    } break;

static void float_pass(int R, int K, const float *x, const float *w, const float *bias, int N, float *y,
                       int n0, int n1)
{
    float out[16];
    switch (R) {
        FLOAT_CASE(1, 1) FLOAT_CASE(2, 8) FLOAT_CASE(3, 4) FLOAT_CASE(4, 4)
        FLOAT_CASE(5, 2) FLOAT_CASE(6, 2) FLOAT_CASE(7, 2) FLOAT_CASE(8, 2)
    }
}

/* The float32 kernels' passes (float_pass, float_panels_pass) over `units` of the weight
   (rows or panels) through linear_passes. */
typedef void (*float_pass_fn)(int R, int K, const float *x, const float *w, const float *bias, int N, float *y,
                              int u0, int u1);

struct float_pass_args {
    float_pass_fn pass;
    int K;
    const float *x, *w, *bias;
    int N;
    float *y;
};

static void float_chunk(const void *ctx, int m0, int R, int u0, int u1)
{
    const struct float_pass_args *c = ctx;
    c->pass(R, c->K, c->x + (int64_t)m0 * c->K, c->w, c->bias, c->N, c->y + (int64_t)m0 * c->N, u0, u1);
}

static void float_rows(float_pass_fn pass, int units, int64_t unit_bytes, const float *x, int M, int K,
                       const float *w, const float *bias, int N, float *y, int threads)
{
    struct float_pass_args ctx = {pass, K, x, w, bias, N, y};
    linear_passes(float_chunk, &ctx, M, units, unit_bytes, threads);
}

/* x: (M, K); w: (N, K) row-major; bias: (N,) or NULL; y: (M, N). Returns 0. */
int float_linear(const float *x, int M, int K, const float *w, const float *bias, int N, float *y, int threads)
{
    float_rows(float_pass, N, (int64_t)K * 4, x, M, K, w, bias, N, y, threads);
    return 0;
}

/* ---- float32 linear layers on panels ---------------------------------------------------------

   The same product from the weight as panels (cpu_decoding.float_panels): panel p holds output
   rows 16p..16p+15 column by column, w[p][k][n % 16] (rows past N zero). Each output is one chain
   of fused multiply-adds over k = 0, 1, ... in order: the same numbers for a row whatever the
   rows beside it and the threads. A row of x costs one 16-wide multiply-add per 64 weight bytes,
   no horizontal sums, so 8 rows reading the weights once approach the machine's compute limit
   where oneDNN's blocked GEMM reached half of it (the server's batches). */

static inline __attribute__((always_inline)) void float_panel_outputs(
    int R, int P, int K, const float *x, const float *panels, const float *bias, int N, float *y, int p)
{
    const float *w = panels + (int64_t)p * K * PANEL;
#if AVX512
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < R * P; i++)
        acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int j = 0; j < P; j++)
            wv[j] = _mm512_loadu_ps(w + ((int64_t)j * K + k) * PANEL);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_set1_ps(x[(int64_t)r * K + k]);
#pragma GCC unroll 4
            for (int j = 0; j < P; j++)
                acc[r * P + j] = _mm512_fmadd_ps(xv, wv[j], acc[r * P + j]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R * P; i++) {
        int r = i / P, n = (p + i % P) * PANEL;
        __mmask16 live = N - n >= PANEL ? 0xFFFF : (__mmask16)((1u << (N - n)) - 1);
        __m512 v = bias ? _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(live, bias + n)) : acc[i];
        _mm512_mask_storeu_ps(y + (int64_t)r * N + n, live, v);
    }
#else
    for (int i = 0; i < R * P; i++) {
        const float *xr = x + (int64_t)(i / P) * K, *panel = w + (int64_t)(i % P) * K * PANEL;
        for (int j = 0, n = (p + i % P) * PANEL; j < PANEL && n < N; j++, n++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc = fmaf(xr[k], panel[(int64_t)k * PANEL + j], acc);
            y[(int64_t)(i / P) * N + n] = bias ? acc + bias[n] : acc;
        }
    }
#endif
}

#define FLOAT_OUTPUTS(R, P, p) float_panel_outputs(R, P, K, x, w, bias, N, y, p)
#define FLOAT_PANEL_CASE(R, P) PANELS_CASE(R, P, FLOAT_OUTPUTS)

static void float_panels_pass(int R, int K, const float *x, const float *w, const float *bias, int N, float *y,
                              int p0, int p1)
{
    switch (R) {
        FLOAT_PANEL_CASE(1, 4) FLOAT_PANEL_CASE(2, 4) FLOAT_PANEL_CASE(3, 4) FLOAT_PANEL_CASE(4, 4)
        FLOAT_PANEL_CASE(5, 2) FLOAT_PANEL_CASE(6, 2) FLOAT_PANEL_CASE(7, 2) FLOAT_PANEL_CASE(8, 2)
    }
}

/* x: (M, K); w: ceil(N / 16) panels of K * 16 floats; bias: (N,) or NULL; y: (M, N). Returns 0. */
int float_panel_linear(const float *x, int M, int K, const float *w, const float *bias, int N, float *y,
                       int threads)
{
    float_rows(float_panels_pass, (N + PANEL - 1) / PANEL, (int64_t)K * 4 * PANEL, x, M, K, w, bias, N, y, threads);
    return 0;
}

/* ---- RMSNorm of a few rows ----------------------------------------------------------------

   y[m] = x[m] * (1 / sqrt(mean_k x[m, k]^2 + eps)) * gain, the sum of squares in dot's fixed
   order: what torch's RMSNorm computes, up to float rounding, in one call instead of six ops.
   x, y: (M, K); gain: (K,). On one thread: a row is 3 KB. Returns 0. */

/* sum_d a[d] * b[d] in LANES lanes, added as a fixed tree, then the tail: one fixed order. */
static float dot(const float *a, const float *b, int D)
{
    int d = 0;
#if AVX512
    __m512 acc = _mm512_setzero_ps();
    for (; d + LANES <= D; d += LANES)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
    float s = _mm512_reduce_add_ps(acc);
#else
    float lanes[LANES] = {0.0f};
    for (; d + LANES <= D; d += LANES)
        for (int l = 0; l < LANES; l++)
            lanes[l] += a[d + l] * b[d + l];
    float s = lane_sum(lanes);
#endif
    for (; d < D; d++)
        s += a[d] * b[d];
    return s;
}

/* For each of G heads h: out[h][d] = sum_j p[h][j] * v[j][h][d] over j = 0..n-1 in order of j,
   reading v position by position (position j's G heads side by side, positions `stride` floats
   apart); p[h] starts at p + h * pstride. */
static void weighted_sums(const float *p, int64_t pstride, const float *v, int64_t stride, int64_t n, int G, int D,
                          float *out)
{
    for (int i = 0; i < G * D; i++)
        out[i] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int h = 0; h < G; h++) {
            const float *vr = v + j * stride + h * D;
            float *o = out + h * D, w = p[h * pstride + j];
            int d = 0;
#if AVX512
            for (; d + LANES <= D; d += LANES)
                _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_set1_ps(w), _mm512_loadu_ps(vr + d),
                                                        _mm512_loadu_ps(o + d)));
#endif
            for (; d < D; d++)
                o[d] += w * vr[d];
        }
}

int rms_norm(const float *x, const float *gain, float eps, int M, int K, float *y)
{
    for (int m = 0; m < M; m++) {
        const float *row = x + (int64_t)m * K;
        float r = 1.0f / sqrtf(dot(row, row, K) / (float)K + eps);
        for (int k = 0; k < K; k++)
            y[(int64_t)m * K + k] = row[k] * r * gain[k];
    }
    return 0;
}

/* ---- exponentials, for softmax and the MLP's activations ------------------------------------ */

#if AVX512
/* e^x in 16 lanes, as Cephes' expf computes it: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two
   parts, so r is exact), e^r = 1 + r + r^2 P(r) with Cephes' degree-5 P, times 2^n (scalef, which
   gives inf past float's range and 0 below it, as expf). Within 1.4 ulp of e^x where it is a
   normal float (measured on a grid of 4 million x). A NaN stays NaN. */
static inline __m512 exp16(__m512 x)
{
    /* x within [-104, 89], where e^x is already 0 and inf (max and min return their second operand
       where either is NaN: a NaN x goes through) */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}
#endif

/* p[j] = e^(p[j] - top) for j < n: 16 at a time (the last 16 masked) where AVX-512 is, every
   element the same way wherever it falls. */
static void exp_shifted(float *p, int64_t n, float top)
{
#if AVX512
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 live = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        _mm512_mask_storeu_ps(p + j, live, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, p + j), _mm512_set1_ps(top))));
    }
#else
    for (int64_t j = 0; j < n; j++)
        p[j] = expf(p[j] - top);
#endif
}

/* ---- one new query per row, attending over its own row's keys ------------------------------

   For row b and head h, from the row's qkv projection [q | k | v] (each H * D wide): q and k
   RMS-normed over the head's D dimensions and scaled by their gains (QK-norm, where gains are
   given), then rotated by the row's rotary angles (where cos and sin are given: dimension pair
   (i, i + D/2) turns by its angle); the key and value stored at position lengths[b] of the cache;
   then y = sum_j p_j v_j / sum_j p_j with p_j = exp(s_j - max s), s_j = (q . k_j) / sqrt(D), over
   the row's keys j <= lengths[b] and no others, each sum in order of j: a row's numbers never
   depend on how long its neighbours are. Rows and heads are shared among the threads.

   qkv: (B, 3 * H * D); q_gain, k_gain: (D,) or NULL; cos, sin: (B, D) or NULL; kc, vc: the
   cache, (B, capacity, H, D) (KVCache's storage: a position's heads side by side); lengths: (B,);
   y: (B, H * D). Returns 0, or -1 when out of memory. */

/* out = x normed by its RMS and scaled by gain (if gain), then rotated by cos/sin (if given). */
static void norm_rotate(const float *x, const float *gain, float eps, const float *cos, const float *sin,
                        int D, float *normed, float *out)
{
    if (gain)
        (void)rms_norm(x, gain, eps, 1, D, normed);
    else
        for (int d = 0; d < D; d++)
            normed[d] = x[d];
    int half = D / 2;
    for (int d = 0; d < D; d++)
        out[d] = !cos ? normed[d]
               : d < half ? normed[d] * cos[d] - normed[d + half] * sin[d]
                          : normed[d] * cos[d] + normed[d - half] * sin[d];
}

int attend_last(const float *qkv, const float *q_gain, const float *k_gain, float eps, const float *cos,
                const float *sin, float *kc, float *vc, const int64_t *lengths, int B, int H, int D,
                int capacity, float *y, int threads)
{
    int failed = 0, C = H * D;
    /* A task: one row's heads h0..h0+G-1, its keys read position by position, each position's
       heads side by side in memory: one sequential stream (a head's keys alone are H * D apart).
       Rows split in head groups when there are fewer rows than threads. */
    int groups = 1, G;
    for (int g = 2; B < threads && g <= threads; g++)
        if (H % g == 0 && threads % g == 0)
            groups = g; /* the largest common divisor of H and the threads */
    G = H / groups;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel num_threads(threads)
    {
        /* scores (G rows of capacity), the queries (G x D), one normed vector, the G totals */
        float *p = malloc(sizeof(float) * ((size_t)G * capacity + (size_t)G * D + D + G));
        if (!p) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int task = 0; task < B * groups; task++) {
            if (!p)
                continue;
            int b = task / groups, h0 = task % groups * G;
            int64_t n = lengths[b] + 1; /* keys, the new one included */
            const float *row = qkv + (int64_t)b * 3 * C;
            const float *c = cos ? cos + (int64_t)b * D : NULL, *s = sin ? sin + (int64_t)b * D : NULL;
            float *keys = kc + (int64_t)b * capacity * C, *values = vc + (int64_t)b * capacity * C;
            float *q = p + (int64_t)G * capacity, *normed = q + (int64_t)G * D, *totals = normed + D;
            float *out = y + (int64_t)b * C;
            for (int h = h0; h < h0 + G; h++) {
                norm_rotate(row + h * D, q_gain, eps, c, s, D, normed, q + (h - h0) * D);
                norm_rotate(row + C + h * D, k_gain, eps, c, s, D, normed, keys + (n - 1) * C + h * D);
                memcpy(values + (n - 1) * C + h * D, row + 2 * C + h * D, sizeof(float) * D);
            }
            for (int64_t j = 0; j < n; j++)
                for (int h = 0; h < G; h++)
                    p[h * capacity + j] = dot(q + h * D, keys + j * C + (h0 + h) * D, D) * scale;
            for (int h = 0; h < G; h++) {
                float *ph = p + (int64_t)h * capacity, top = -INFINITY, total = 0.0f;
                for (int64_t j = 0; j < n; j++)
                    top = ph[j] > top ? ph[j] : top;
                exp_shifted(ph, n, top);
                for (int64_t j = 0; j < n; j++)
                    total += ph[j];
                totals[h] = total;
            }
            weighted_sums(p, capacity, values + h0 * D, C, n, G, D, out + h0 * D);
            for (int h = 0; h < G; h++)
                for (int d = 0; d < D; d++)
                    out[(h0 + h) * D + d] /= totals[h];
        }
        free(p);
    }
    return failed ? -1 : 0;
}

/* ---- a whole block of a decoding step --------------------------------------------------------

   A transformer block's decoding step for B rows (one new token each) in one call, where it took
   a dozen torch ops and kernel calls whose Python around them cost more than the attention did:
       h = x + out(attend(qkv(norm1(x))))        y = h + down(act(fc(norm2(h))))
   norm: LayerNorm (its bias where given) or RMSNorm; act: GELU (tanh approximation), SwiGLU (fc's
   rows [gate; up]: silu(gate) * up) or squared ReLU; attention as attend_last. Each linear layer
   runs the kernel of the layout its module keeps. Every step goes row by row in the same order as
   for a row alone, so a row's numbers still never depend on the other rows. */

enum { LINEAR_ROWS, LINEAR_PANELS, LINEAR_INT8 };
enum { ACT_GELU, ACT_SWIGLU, ACT_RELU2 };

struct linear {
    int kind; /* LINEAR_ROWS: float32 (N, K) row-major; LINEAR_PANELS: float32 panels; LINEAR_INT8: int8 panels */
    int N, K;
    const void *w;
    const int32_t *wsum; /* LINEAR_INT8: each panel row's sum */
    const float *ws;     /* LINEAR_INT8: each row's scale */
    const float *bias;   /* (N,) or NULL */
};

struct block {
    const float *norm1, *norm1_bias, *norm2, *norm2_bias; /* gains (C,); LayerNorm's biases or NULL */
    int rms;                                              /* 1: RMSNorm, 0: LayerNorm */
    float eps;
    struct linear qkv, out, fc, down;
    const float *q_gain, *k_gain; /* QK-norm's gains (D,), or NULL */
    float qk_eps;
    int act; /* ACT_* */
    int H, D;
};

static int apply_linear(const struct linear *l, const float *x, int M, float *y, int threads)
{
    switch (l->kind) {
    case LINEAR_ROWS:
        return float_linear(x, M, l->K, l->w, l->bias, l->N, y, threads);
    case LINEAR_PANELS:
        return float_panel_linear(x, M, l->K, l->w, l->bias, l->N, y, threads);
    case LINEAR_INT8:
        return int8_linear(x, M, l->K, l->w, l->wsum, l->ws, l->bias, l->N, y, threads);
    default:
        return -1;
    }
}

/* sum_k a[k] in LANES lanes, added as a fixed tree, then the tail. */
static float total(const float *a, int K)
{
    int k = 0;
    float lanes[LANES] = {0.0f};
    for (; k + LANES <= K; k += LANES)
        for (int l = 0; l < LANES; l++)
            lanes[l] += a[k + l];
    float s = lane_sum(lanes);
    for (; k < K; k++)
        s += a[k];
    return s;
}

/* LayerNorm of M rows: (x - mean) / sqrt(var + eps) * gain + bias (bias if given), the variance
   biased (over K), as torch's. */
static void layer_norm(const float *x, const float *gain, const float *bias, float eps, int M, int K, float *y)
{
    for (int m = 0; m < M; m++) {
        const float *row = x + (int64_t)m * K;
        float *out = y + (int64_t)m * K, mean = total(row, K) / (float)K;
        for (int k = 0; k < K; k++)
            out[k] = row[k] - mean;
        float r = 1.0f / sqrtf(dot(out, out, K) / (float)K + eps);
        for (int k = 0; k < K; k++)
            out[k] = bias ? out[k] * r * gain[k] + bias[k] : out[k] * r * gain[k];
    }
}

/* The MLP's activation (ACT_*) of M rows of fc's F outputs h into `a`: (M, F) for GELU and
   squared ReLU, (M, F / 2) for SwiGLU. GELU: 0.5 v (1 + tanh u) = v - v / (exp(2u) + 1), one exp.
   Each element is computed the same way wherever it falls (16 at a time, the last 16 masked).
   Returns 0. */
int activate(int act, const float *h, int M, int F, float *a, int threads)
{
    int A = act == ACT_SWIGLU ? F / 2 : F;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int m = 0; m < M; m++)
        for (int i = 0; i < A; i += 16) {
            const float *v = h + (int64_t)m * F + i, *up = v + A;
            float *out = a + (int64_t)m * A + i;
#if AVX512
            __mmask16 live = A - i >= 16 ? 0xFFFF : (__mmask16)((1u << (A - i)) - 1);
            __m512 x = _mm512_maskz_loadu_ps(live, v), y, one = _mm512_set1_ps(1.0f);
            if (act == ACT_GELU) {
                __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608f),
                                         _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(0.044715f),
                                                                        _mm512_mul_ps(x, _mm512_mul_ps(x, x)))));
                y = _mm512_mul_ps(x, _mm512_sub_ps(one, _mm512_div_ps(one, _mm512_add_ps(exp16(_mm512_add_ps(u, u)), one))));
            } else if (act == ACT_SWIGLU) {
                __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
                y = _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(live, up));
            } else {
                __m512 r = _mm512_max_ps(_mm512_setzero_ps(), x); /* (a NaN x: NaN, as torch's relu) */
                y = _mm512_mul_ps(r, r);
            }
            _mm512_mask_storeu_ps(out, live, y);
#else
            for (int j = 0; j < 16 && i + j < A; j++) {
                float x = v[j];
                if (act == ACT_GELU) {
                    float u = 0.7978845608f * (x + 0.044715f * x * x * x);
                    out[j] = x * (1.0f - 1.0f / (expf(2.0f * u) + 1.0f));
                } else if (act == ACT_SWIGLU) {
                    out[j] = x / (1.0f + expf(-x)) * up[j];
                } else {
                    float r = x < 0.0f ? 0.0f : x;
                    out[j] = r * r;
                }
            }
#endif
        }
    return 0;
}

/* x, y: (B, C) with C = H * D; keys, values, lengths, capacity, cos, sin: this layer's cache and the
   rows' rotary angles, as attend_last. The weights' shapes (K -> N): qkv C -> 3C, out C -> C, fc
   C -> F, down F (SwiGLU: F / 2) -> C (Block.decoding_weights checks them). Returns 0, or -1 when
   out of memory (or a linear layer of unknown kind). */
int decode_block(const struct block *b, const float *x, int B, float *keys, float *values, const int64_t *lengths,
                 int capacity, const float *cos, const float *sin, float *y, int threads)
{
    int C = b->H * b->D, F = b->fc.N;
    float *normed = malloc(sizeof(float) * (size_t)B * (6 * (size_t)C + 2 * (size_t)F));
    if (!normed)
        return -1;
    float *qkv = normed + (int64_t)B * C, *attended = qkv + (int64_t)B * 3 * C, *proj = attended + (int64_t)B * C;
    float *h = proj + (int64_t)B * C, *a = h + (int64_t)B * F;
    if (b->rms)
        rms_norm(x, b->norm1, b->eps, B, C, normed);
    else
        layer_norm(x, b->norm1, b->norm1_bias, b->eps, B, C, normed);
    /* each step only if the ones before it succeeded (out of memory: nothing more is written) */
    int failed = apply_linear(&b->qkv, normed, B, qkv, threads)
              || attend_last(qkv, b->q_gain, b->k_gain, b->qk_eps, cos, sin, keys, values, lengths, B, b->H, b->D,
                             capacity, attended, threads)
              || apply_linear(&b->out, attended, B, proj, threads);
    if (!failed) {
        for (int64_t i = 0; i < (int64_t)B * C; i++)
            y[i] = x[i] + proj[i];
        if (b->rms)
            rms_norm(y, b->norm2, b->eps, B, C, normed);
        else
            layer_norm(y, b->norm2, b->norm2_bias, b->eps, B, C, normed);
        failed = apply_linear(&b->fc, normed, B, h, threads) || activate(b->act, h, B, F, a, threads)
              || apply_linear(&b->down, a, B, proj, threads);
    }
    if (!failed)
        for (int64_t i = 0; i < (int64_t)B * C; i++)
            y[i] += proj[i];
    free(normed);
    return failed ? -1 : 0;
}
