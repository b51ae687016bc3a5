/* int8 linear layers for decoding on CPUs (see int8_native.py, which compiles and calls this).

   y[m, n] = (sum_k qx[m, k] * w[n, k]) * (xs[m] * ws[n]) + bias[n], where each row of x is
   quantized here as Int8Linear does it in torch (xs = max|x| / 127, qx = x / xs rounded half to
   even). The integer sums are exact, and every float operation is the one torch does in the same
   order (compiled with -ffp-contract=off: no fused multiply-adds), so the result is the same, bit
   for bit, as Int8Linear's torch._int_mm path, whatever the number of rows.

   Why: a decoding step multiplies a few rows by every weight, so its speed is how fast the
   weights stream from memory. Here each thread reads its share of the weight rows once, for all
   the rows of x at a time, with AVX-512 VNNI's 64-byte integer dot products where the CPU has
   them (a portable loop the compiler vectorises elsewhere). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define VNNI 1
#else
#define VNNI 0
#endif

#define CHUNK 8 /* rows of x per pass over the weights: their accumulators stay in registers */

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
#ifdef _OPENMP
            int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
            int t = 0, T = 1;
#endif
            int n0 = (int)((int64_t)N * t / T), n1 = (int)((int64_t)N * (t + 1) / T);
            rows_pass(R, K, q, u, xs + m0, w, wsum, ws, bias, N, out, n0, n1);
        }
    }
    free(qx), free(ux), free(xs);
    return 0;
}
