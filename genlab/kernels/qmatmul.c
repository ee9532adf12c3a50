/* Weight-only quantized matrix products for few rows of activations (decoding: one to a few dozen
 * tokens a step), the hot loop of genlab's int8 and int4 language models on CPUs.
 *
 *   y[m, n] = sum_k x[m, k] * w[n, k],   w dequantized on the fly from the stored integers:
 *   int8: w[n, k] = q[n, k] * scale[n]                       (one scale per output row)
 *   int4: w[n, k] = (u[n, k] - 8) * scale[n, k / group]      (u: 4-bit, two per byte, low nibble = even k)
 *
 * Each weight byte is read once per call and used for up to ROWS activation rows at a time, so the
 * cost is the weights' bytes, not a float copy of them. AVX2+FMA loops where the compiler targets
 * them (built with -march=native on the machine that runs them), plain C loops elsewhere. OpenMP
 * splits the output rows in the same libgomp runtime as PyTorch's (same soname, loaded once), so
 * threads are shared; the caller passes torch.get_num_threads(). The caller guarantees K % 16 == 0 and, for int4,
 * group % 32 == 0. */

#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GL_AVX2 1
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#define ROWS 4 /* activation rows that share one pass over a weight row */

const char *gl_kernel_isa(void) {
#ifdef GL_AVX2
    return "avx2+fma";
#else
    return "c";
#endif
}

/* ---- int8 ---------------------------------------------------------------------------------- */

static void q8_rows(const int8_t *restrict row, const float *restrict x, int mb, int K, float *acc) {
#ifdef GL_AVX2
    __m256 a[ROWS];
    for (int j = 0; j < ROWS; j++) a[j] = _mm256_setzero_ps();
    if (mb == 1) { /* two accumulators: one FMA chain would wait on its own latency */
        __m256 b = _mm256_setzero_ps();
        int k = 0;
        for (; k + 16 <= K; k += 16) {
            __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + k))));
            __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + k + 8))));
            a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + k), a[0]);
            b = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + k + 8), b);
        }
        for (; k < K; k += 8) {
            __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + k))));
            a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + k), a[0]);
        }
        acc[0] = hsum(_mm256_add_ps(a[0], b));
        return;
    }
    for (int k = 0; k < K; k += 8) {
        __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + k))));
        for (int j = 0; j < mb; j++) a[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + (int64_t)j * K + k), a[j]);
    }
    for (int j = 0; j < mb; j++) acc[j] = hsum(a[j]);
#else
    for (int j = 0; j < mb; j++) {
        const float *xr = x + (int64_t)j * K;
        float s = 0;
        for (int k = 0; k < K; k++) s += (float)row[k] * xr[k];
        acc[j] = s;
    }
#endif
}

void gl_q8_matmul(const float *restrict x, int M, int K, const int8_t *restrict q,
                  const float *restrict scale, int N, float *restrict y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int n = 0; n < N; n++) {
        const int8_t *row = q + (int64_t)n * K;
        for (int m0 = 0; m0 < M; m0 += ROWS) {
            int mb = M - m0 < ROWS ? M - m0 : ROWS;
            float acc[ROWS];
            q8_rows(row, x + (int64_t)m0 * K, mb, K, acc);
            for (int j = 0; j < mb; j++) y[(int64_t)(m0 + j) * N + n] = acc[j] * scale[n];
        }
    }
}

/* ---- int4 ---------------------------------------------------------------------------------- */

/* xe/xo: the activations' even and odd columns, (M, K/2) each, and xs: their sums per group,
 * (M, K/group). Low nibbles pair with even columns and high nibbles with odd ones, so bytes need
 * no shuffling, and the "- 8" offset becomes one term per group: sum (u - 8) x = sum u x - 8 sum x. */
static void q4_rows(const uint8_t *restrict p, const float *restrict xe, const float *restrict xo,
                    const float *restrict xs, int mb, int K, int group, const float *restrict sc, float *acc) {
    int half = K / 2, groups = K / group, gh = group / 2;
    float off[ROWS] = {0};
#ifdef GL_AVX2
    const __m128i low = _mm_set1_epi8(15);
    if (mb == 1) { /* decoding one sequence: everything in registers, two FMA chains */
        __m256 sum = _mm256_setzero_ps();
        float offset = 0;
        for (int g = 0; g < groups; g++) {
            __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
            for (int i = g * gh; i < (g + 1) * gh; i += 16) {
                __m128i b = _mm_loadu_si128((const __m128i *)(p + i));
                __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
                t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xe + i), t0);
                t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                                     _mm256_loadu_ps(xe + i + 8), t1);
                t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xo + i), t0);
                t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                                     _mm256_loadu_ps(xo + i + 8), t1);
            }
            sum = _mm256_fmadd_ps(_mm256_add_ps(t0, t1), _mm256_set1_ps(sc[g]), sum);
            offset += xs[g] * sc[g];
        }
        acc[0] = hsum(sum) - 8.0f * offset;
        return;
    }
    __m256 a[ROWS];
    for (int j = 0; j < ROWS; j++) a[j] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) {
        __m256 t[ROWS];
        for (int j = 0; j < ROWS; j++) t[j] = _mm256_setzero_ps();
        for (int i = 0; i < gh; i += 16) {
            __m128i b = _mm_loadu_si128((const __m128i *)(p + g * gh + i));
            __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
            __m256 e0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            __m256 e1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            __m256 o0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            __m256 o1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            for (int j = 0; j < mb; j++) {
                const float *e = xe + (int64_t)j * half + g * gh + i, *o = xo + (int64_t)j * half + g * gh + i;
                t[j] = _mm256_fmadd_ps(e0, _mm256_loadu_ps(e), t[j]);
                t[j] = _mm256_fmadd_ps(e1, _mm256_loadu_ps(e + 8), t[j]);
                t[j] = _mm256_fmadd_ps(o0, _mm256_loadu_ps(o), t[j]);
                t[j] = _mm256_fmadd_ps(o1, _mm256_loadu_ps(o + 8), t[j]);
            }
        }
        __m256 s = _mm256_set1_ps(sc[g]);
        for (int j = 0; j < mb; j++) {
            a[j] = _mm256_fmadd_ps(t[j], s, a[j]);
            off[j] += xs[(int64_t)j * groups + g] * sc[g];
        }
    }
    for (int j = 0; j < mb; j++) acc[j] = hsum(a[j]) - 8.0f * off[j];
#else
    for (int j = 0; j < mb; j++) {
        const float *e = xe + (int64_t)j * half, *o = xo + (int64_t)j * half;
        float total = 0;
        for (int g = 0; g < groups; g++) {
            float s = 0;
            for (int i = g * gh; i < (g + 1) * gh; i++) s += (float)(p[i] & 15) * e[i] + (float)(p[i] >> 4) * o[i];
            total += (s - 8.0f * xs[(int64_t)j * groups + g]) * sc[g];
        }
        acc[j] = total;
    }
    (void)off;
#endif
}

void gl_q4_matmul(const float *restrict x, int M, int K, const uint8_t *restrict packed,
                  const float *restrict scale, int group, int N, float *restrict y, int threads) {
    int half = K / 2, groups = K / group;
    float *xe = malloc(sizeof(float) * (size_t)M * half);
    float *xo = malloc(sizeof(float) * (size_t)M * half);
    float *xs = malloc(sizeof(float) * (size_t)M * groups);
    for (int m = 0; m < M; m++) {
        const float *xr = x + (int64_t)m * K;
        for (int i = 0; i < half; i++) {
            xe[(int64_t)m * half + i] = xr[2 * i];
            xo[(int64_t)m * half + i] = xr[2 * i + 1];
        }
        for (int g = 0; g < groups; g++) {
            float s = 0;
            for (int i = 0; i < group; i++) s += xr[g * group + i];
            xs[(int64_t)m * groups + g] = s;
        }
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int n = 0; n < N; n++) {
        const uint8_t *row = packed + (int64_t)n * half;
        const float *sc = scale + (int64_t)n * groups;
        for (int m0 = 0; m0 < M; m0 += ROWS) {
            int mb = M - m0 < ROWS ? M - m0 : ROWS;
            float acc[ROWS];
            q4_rows(row, xe + (int64_t)m0 * half, xo + (int64_t)m0 * half, xs + (int64_t)m0 * groups, mb, K,
                    group, sc, acc);
            for (int j = 0; j < mb; j++) y[(int64_t)(m0 + j) * N + n] = acc[j];
        }
    }
    free(xe); free(xo); free(xs);
}
