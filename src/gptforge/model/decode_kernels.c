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

/* ---- int8 linear layers ----------------------------------------------------------------------

   y[m, n] = (sum_k qx[m, k] * w[n, k]) * (xs[m] * ws[n]) + bias[n], where each row of x is
   quantized here as Int8Linear does it in torch (xs = max|x| / 127, qx = x / xs rounded half to
   even). The integer sums are exact, and every float operation is the one torch does in the same
   order (compiled with -ffp-contract=off: no fused multiply-adds), so the result is the same, bit
   for bit, as Int8Linear's torch._int_mm path, whatever the number of rows: with AVX-512 VNNI's
   64-byte integer dot products where the CPU has them, a portable loop elsewhere. */

static void quantize_rows(const float *x, int M, int K, int8_t *qx, uint8_t *ux, float *xs)
{
    for (int m = 0; m < M; m++) {
        const float *row = x + (int64_t)m * K;
        float amax = 0.0f;
        for (int k = 0; k < K; k++) { /* a NaN wins and stays, as in torch's amax */
            float a = fabsf(row[k]);
            if (isnan(a) || a > amax)
                amax = isnan(amax) ? amax : a;
        }
        float scale = (isnan(amax) ? amax : fmaxf(amax, 1e-12f)) / 127.0f; /* then every output is NaN */
        xs[m] = scale;
        for (int k = 0; k < K; k++) {
            float r = nearbyintf(row[k] / scale);
            int8_t q = isnan(r) ? 0 : (int8_t)r; /* |r| <= 127 otherwise */
            qx[(int64_t)m * K + k] = q;
            ux[(int64_t)m * K + k] = (uint8_t)(q + 128); /* VNNI multiplies unsigned by signed bytes */
        }
    }
}

/* The exact int32 dot products of R rows of x (R known at compile time in each copy below) with
   weight row `wr`: sums[r] = sum_k qx[r, k] * wr[k]. */
static inline __attribute__((always_inline)) void dot_rows(
    int R, int K, const int8_t *qx, const uint8_t *ux, const int8_t *wr, int32_t wsum, int32_t *sums)
{
    int k = 0;
#if VNNI
    __m512i acc[CHUNK];
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_si512();
    for (; k + 64 <= K; k += 64) {
        __m512i w = _mm512_loadu_si512((const void *)(wr + k));
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_loadu_si512((const void *)(ux + (int64_t)r * K + k)), w);
    }
    for (int r = 0; r < R; r++) /* (q + 128) . w counted 128 * sum(w) too many */
        sums[r] = _mm512_reduce_add_epi32(acc[r]) - 128 * (k == K ? wsum : 0);
    if (k != K) { /* a tail: its columns in plain integers, and the correction for the others */
        int32_t head = 0;
        for (int j = 0; j < k; j++)
            head += (int32_t)wr[j];
        for (int r = 0; r < R; r++) {
            sums[r] -= 128 * head;
            for (int j = k; j < K; j++)
                sums[r] += (int32_t)qx[(int64_t)r * K + j] * (int32_t)wr[j];
        }
    }
#else
    (void)ux;
    (void)wsum;
    for (int r = 0; r < R; r++) {
        const int8_t *xr = qx + (int64_t)r * K;
        int32_t s = 0;
        for (k = 0; k < K; k++)
            s += (int32_t)xr[k] * (int32_t)wr[k];
        sums[r] = s;
    }
#endif
}

#define ROWS_CASE(R) case R: for (int n = n0; n < n1; n++) { \
        dot_rows(R, K, qx, ux, w + (int64_t)n * K, wsum[n], sums); \
        for (int r = 0; r < R; r++) { \
            float v = (float)sums[r] * (xs[r] * ws[n]); \
            y[(int64_t)r * N + n] = bias ? v + bias[n] : v; \
        } \
    } break;

/* One pass of up to CHUNK rows over weight rows n0..n1. */
static void rows_pass(int R, int K, const int8_t *qx, const uint8_t *ux, const float *xs, const int8_t *w,
                      const int32_t *wsum, const float *ws, const float *bias, int N, float *y, int n0, int n1)
{
    int32_t sums[CHUNK];
    switch (R) {
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4)
        ROWS_CASE(5) ROWS_CASE(6) ROWS_CASE(7) ROWS_CASE(8)
    }
}

/* x: (M, K) float32; w: (N, K) int8 row-major; wsum: (N,) the sum of each weight row; ws: (N,)
   scales; bias: (N,) or NULL; y: (M, N) float32. Returns 0, or -1 when out of memory. */
int int8_linear(const float *x, int M, int K, const int8_t *w, const int32_t *wsum, const float *ws,
                const float *bias, int N, float *y, int threads)
{
    int8_t *qx = malloc((size_t)M * K);
    uint8_t *ux = malloc((size_t)M * K);
    float *xs = malloc(sizeof(float) * (size_t)M);
    if (!qx || !ux || !xs) {
        free(qx), free(ux), free(xs);
        return -1;
    }
    quantize_rows(x, M, K, qx, ux, xs);
    for (int m0 = 0; m0 < M; m0 += CHUNK) {
        int R = M - m0 < CHUNK ? M - m0 : CHUNK;
        const int8_t *q = qx + (int64_t)m0 * K;
        const uint8_t *u = ux + (int64_t)m0 * K;
        float *out = y + (int64_t)m0 * N;
        /* Each thread a contiguous block of weight rows: one sequential stream from memory. */
#pragma omp parallel num_threads(threads)
        {
            int n0, n1;
            thread_share(N, &n0, &n1);
            rows_pass(R, K, q, u, xs + m0, w, wsum, ws, bias, N, out, n0, n1);
        }
    }
    free(qx), free(ux), free(xs);
    return 0;
}

/* ---- float32 linear layers -------------------------------------------------------------------

   y[m, n] = sum_k x[m, k] * w[n, k] + bias[n], w row-major (N, K). Each sum runs in 16 lanes (lane
   l takes k = l, l + 16, ...), then the lanes are added in a fixed order, then the tail columns
   one by one: the same order for every output, however many rows and weight rows are computed
   together. R rows of x times NW weight rows at a time: R * NW accumulators in registers, and NW
   weight rows streaming from memory at once (one row alone leaves bandwidth unused). */

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
        FLOAT_CASE(1, 8) FLOAT_CASE(2, 8) FLOAT_CASE(3, 4) FLOAT_CASE(4, 4)
        FLOAT_CASE(5, 2) FLOAT_CASE(6, 2) FLOAT_CASE(7, 2) FLOAT_CASE(8, 2)
    }
}

/* x: (M, K); w: (N, K) row-major; bias: (N,) or NULL; y: (M, N). Returns 0. */
int float_linear(const float *x, int M, int K, const float *w, const float *bias, int N, float *y, int threads)
{
    for (int m0 = 0; m0 < M; m0 += CHUNK) {
        int R = M - m0 < CHUNK ? M - m0 : CHUNK;
#pragma omp parallel num_threads(threads)
        {
            int n0, n1;
            thread_share(N, &n0, &n1);
            float_pass(R, K, x + (int64_t)m0 * K, w, bias, N, y + (int64_t)m0 * N, n0, n1);
        }
    }
    return 0;
}

/* ---- one new query per row, attending over its own row's keys ------------------------------

   For row b and head h: store the new key and value at position lengths[b] of the cache, then
   y = sum_j p_j v_j / sum_j p_j with p_j = exp(s_j - max s), s_j = (q . k_j) / sqrt(D), over the
   row's keys j <= lengths[b] and no others, each sum in order of j: a row's numbers never
   depend on how long its neighbours are. Rows and heads are shared among the threads.

   q, k_new, v_new, y: (B, H, D); kc, vc: the cache, (B, H, capacity, D); lengths: (B,). Returns
   0, or -1 when out of memory. */
int attend_last(const float *q, const float *k_new, const float *v_new, float *kc, float *vc,
                const int64_t *lengths, int B, int H, int D, int capacity, float *y, int threads)
{
    int failed = 0;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel num_threads(threads)
    {
        float *p = malloc(sizeof(float) * (size_t)capacity);
        float lanes[LANES];
        if (!p) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            if (!p)
                continue;
            int64_t n = lengths[bh / H] + 1; /* keys, the new one included */
            const float *qr = q + (int64_t)bh * D;
            float *keys = kc + (int64_t)bh * capacity * D, *values = vc + (int64_t)bh * capacity * D;
            float *out = y + (int64_t)bh * D;
            for (int d = 0; d < D; d++) {
                keys[(n - 1) * D + d] = k_new[(int64_t)bh * D + d];
                values[(n - 1) * D + d] = v_new[(int64_t)bh * D + d];
            }
            float top = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                const float *kr = keys + j * D;
                int d = 0;
                for (int l = 0; l < LANES; l++)
                    lanes[l] = 0.0f;
                for (; d + LANES <= D; d += LANES)
                    for (int l = 0; l < LANES; l++)
                        lanes[l] += qr[d + l] * kr[d + l];
                float s = lane_sum(lanes);
                for (; d < D; d++)
                    s += qr[d] * kr[d];
                p[j] = s * scale;
                top = p[j] > top ? p[j] : top;
            }
            float total = 0.0f;
            for (int64_t j = 0; j < n; j++) {
                p[j] = expf(p[j] - top);
                total += p[j];
            }
            for (int d = 0; d < D; d++)
                out[d] = 0.0f;
            for (int64_t j = 0; j < n; j++)
                for (int d = 0; d < D; d++)
                    out[d] += p[j] * values[j * D + d];
            for (int d = 0; d < D; d++)
                out[d] /= total;
        }
        free(p);
    }
    return failed ? -1 : 0;
}
