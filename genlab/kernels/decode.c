/* One decoding step of genlab's Transformer (models/transformer.py) in C: every layer's norms, fused
 * q/k/v product, rotary positions, cache write, grouped-query attention, output product, SwiGLU MLP,
 * and the LM head, for one new token in each of `n` sequences (rows), each at its own position.
 *
 * Why: in eager PyTorch a 30-layer model's step is about 400 small operators, and on a CPU their
 * dispatch costs more than the arithmetic of the products themselves. Here the step is one call, one
 * OpenMP parallel region whose threads split each product's output rows (and attention's heads);
 * the serial parts between products are a few microseconds of work. Each weight row is read once
 * for up to ROWS sequences (qmatmul.c), so a batch costs little more than one sequence.
 *
 * Weights are the model's own tensors (no copy): fp32, or genlab's int8/int4 formats through the
 * row kernels of qmatmul.c. Keys and values are the cache's own tensors, (rows, n_kv_head, cap,
 * head_dim) per layer, fp32 (a KVCache, or the server's batch cache). The Python side (kernels/decode.py) builds the description below once. */

#include <math.h>
#include <string.h>

#include "qmatmul.c"

enum { GL_F32 = 0, GL_Q8 = 1, GL_Q4 = 2 };

typedef struct {
    int kind, rows, cols, group; /* group: int4 only */
    const void *weight;          /* float (rows, cols) | int8 (rows, cols) | uint8 (rows, cols/2) */
    const float *scale;          /* int8: (rows,) | int4: (rows, cols/group) */
} gl_linear;

typedef struct {
    const float *input_norm, *post_attn_norm;
    gl_linear qkv, o, gate_up, down;
} gl_layer;

typedef struct {
    int n_layer, d_model, n_head, n_kv_head, head_dim, ffn, vocab;
    float eps;
    const float *rope_cos, *rope_sin; /* (context, head_dim), rotate-half layout */
    const float *final_norm;
    gl_linear lm_head;
    const gl_layer *layers;
} gl_model;

/* Scratch for one product's input: int4 wants its activations split into even/odd columns plus
 * per-group sums (see q4_rows), computed once per product, not once per output row. */
typedef struct { float *even, *odd, *sums; } gl_prep;

static void prepare_input(const gl_linear *w, const float *x, int M, gl_prep *p) {
    if (w->kind != GL_Q4) return;
    int K = w->cols, half = K / 2, groups = K / w->group;
    for (int m = 0; m < M; m++) {
        const float *xr = x + (int64_t)m * K;
        float *e = p->even + (int64_t)m * half, *o = p->odd + (int64_t)m * half, *s = p->sums + (int64_t)m * groups;
        for (int i = 0; i < half; i++) {
            e[i] = xr[2 * i];
            o[i] = xr[2 * i + 1];
        }
        for (int g = 0; g < groups; g++) {
            float t = 0;
            for (int i = 0; i < w->group; i++) t += xr[g * w->group + i];
            s[g] = t;
        }
    }
}

static float dot_f32(const float *restrict a, const float *restrict b, int n) {
#ifdef GL_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
#else
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
#endif
}

/* acc[j] = w . x[j] for mb <= ROWS rows of x, reading w once */
static void f32_rows(const float *restrict w, const float *restrict x, int mb, int K, float *acc) {
    if (mb == 1) {
        acc[0] = dot_f32(w, x, K);
        return;
    }
#ifdef GL_AVX2
    __m256 a[ROWS];
    for (int j = 0; j < ROWS; j++) a[j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wk = _mm256_loadu_ps(w + k);
        for (int j = 0; j < mb; j++) a[j] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + (int64_t)j * K + k), a[j]);
    }
    for (int j = 0; j < mb; j++) {
        float s = hsum(a[j]);
        for (int i = k; i < K; i++) s += w[i] * x[(int64_t)j * K + i];
        acc[j] = s;
    }
#else
    for (int j = 0; j < mb; j++) acc[j] = dot_f32(w, x + (int64_t)j * K, K);
#endif
}

/* y (M, rows) = x (M, cols) W^T, the weight rows shared among the threads of the enclosing parallel
 * region (an orphaned `omp for`: its implied barrier is what the next step waits on). */
static void product(const gl_linear *w, const float *x, int M, const gl_prep *p, float *y) {
    int K = w->cols, half = K / 2, groups = w->group ? K / w->group : 0;
#pragma omp for schedule(static)
    for (int n = 0; n < w->rows; n++) {
        for (int m0 = 0; m0 < M; m0 += ROWS) {
            int mb = M - m0 < ROWS ? M - m0 : ROWS;
            float acc[ROWS];
            if (w->kind == GL_F32) {
                f32_rows((const float *)w->weight + (int64_t)n * K, x + (int64_t)m0 * K, mb, K, acc);
            } else if (w->kind == GL_Q8) {
                q8_rows((const int8_t *)w->weight + (int64_t)n * K, x + (int64_t)m0 * K, mb, K, acc);
                for (int j = 0; j < mb; j++) acc[j] *= w->scale[n];
            } else {
                q4_rows((const uint8_t *)w->weight + (int64_t)n * half, p->even + (int64_t)m0 * half,
                        p->odd + (int64_t)m0 * half, p->sums + (int64_t)m0 * groups, mb, K, w->group,
                        w->scale + (int64_t)n * groups, acc);
            }
            for (int j = 0; j < mb; j++) y[(int64_t)(m0 + j) * w->rows + n] = acc[j];
        }
    }
}

static void rms_norm(const float *x, const float *gain, float *out, int n, float eps) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = gain[i] * (x[i] * r);
}

static void rotate(float *v, const float *cos, const float *sin, int dim) {
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static int64_t longest(const int64_t *pos, int n) {
    int64_t most = 0;
    for (int r = 0; r < n; r++) most = pos[r] > most ? pos[r] : most;
    return most;
}

/* scratch floats the step needs for n rows whose furthest position is `last` (the caller allocates) */
long gl_decode_scratch(const gl_model *m, int n, long last) {
    long widest = m->d_model > m->ffn ? m->d_model : m->ffn;
    long qkv = (long)(m->n_head + 2 * m->n_kv_head) * m->head_dim;
    return n * (2L * m->d_model + qkv + (long)m->n_head * m->head_dim + 3L * m->ffn + (long)m->n_head * (last + 1)
                + 2L * widest); /* + the int4 input scratch: even, odd (widest/2 each) and sums (< widest) */
}

/* x: (n, d_model) embeddings of the new tokens (overwritten); pos[r]: row r's position, written and
 * attended up to. k_cache[l], v_cache[l]: layer l's cache, (>= n rows, n_kv_head, cap, head_dim).
 * logits: (n, vocab) out. */
void gl_decode(const gl_model *m, float *restrict x, int n, const int64_t *pos, float *const *k_cache,
               float *const *v_cache, int cap, float *restrict logits, float *restrict scratch, int threads) {
    const int d = m->d_model, hd = m->head_dim, nh = m->n_head, nkv = m->n_kv_head, groups = nh / nkv;
    const int ffn = m->ffn, width = (nh + 2 * nkv) * hd, widest = d > ffn ? d : ffn;
    const int64_t span = longest(pos, n) + 1, row_stride = (int64_t)nkv * cap * hd;
    float *h = scratch, *tmp = h + n * d, *qkv = tmp + n * d, *att = qkv + n * width, *gu = att + n * nh * hd,
          *act = gu + 2 * n * ffn, *scores = act + n * ffn, *q4 = scores + n * nh * span;
    gl_prep prep = {q4, q4 + n * (widest / 2), q4 + n * widest};
    const float scale = 1.0f / sqrtf((float)hd);

#pragma omp parallel num_threads(threads)
    for (int l = 0; l < m->n_layer; l++) {
        const gl_layer *L = &m->layers[l];
#pragma omp single
        {
            for (int r = 0; r < n; r++) rms_norm(x + r * d, L->input_norm, h + r * d, d, m->eps);
            prepare_input(&L->qkv, h, n, &prep);
        }
        product(&L->qkv, h, n, &prep, qkv);
#pragma omp single
        for (int r = 0; r < n; r++) {
            float *row = qkv + r * width, *kc = k_cache[l] + r * row_stride, *vc = v_cache[l] + r * row_stride;
            const float *cos = m->rope_cos + pos[r] * hd, *sin = m->rope_sin + pos[r] * hd;
            for (int j = 0; j < nh + nkv; j++) rotate(row + j * hd, cos, sin, hd); /* query and key heads */
            for (int j = 0; j < nkv; j++) {
                memcpy(kc + ((int64_t)j * cap + pos[r]) * hd, row + (nh + j) * hd, sizeof(float) * hd);
                memcpy(vc + ((int64_t)j * cap + pos[r]) * hd, row + (nh + nkv + j) * hd, sizeof(float) * hd);
            }
        }
#pragma omp for schedule(static)
        for (int rj = 0; rj < n * nh; rj++) { /* row r's query head j reads its key/value head j / groups */
            int r = rj / nh, j = rj % nh;
            const int64_t head = r * row_stride + (int64_t)(j / groups) * cap * hd;
            const float *q = qkv + r * width + j * hd, *K = k_cache[l] + head, *V = v_cache[l] + head;
            float *s = scores + rj * span, best = -INFINITY, total = 0;
            for (int64_t t = 0; t <= pos[r]; t++) {
                s[t] = dot_f32(q, K + t * hd, hd) * scale;
                best = s[t] > best ? s[t] : best;
            }
            for (int64_t t = 0; t <= pos[r]; t++) total += (s[t] = expf(s[t] - best));
            float *y = att + (r * nh + j) * hd;
            for (int i = 0; i < hd; i++) y[i] = 0;
            for (int64_t t = 0; t <= pos[r]; t++) {
                float w = s[t] / total;
                const float *v = V + t * hd;
                for (int i = 0; i < hd; i++) y[i] += w * v[i];
            }
        }
#pragma omp single
        prepare_input(&L->o, att, n, &prep);
        product(&L->o, att, n, &prep, tmp);
#pragma omp single
        {
            for (int i = 0; i < n * d; i++) x[i] += tmp[i];
            for (int r = 0; r < n; r++) rms_norm(x + r * d, L->post_attn_norm, h + r * d, d, m->eps);
            prepare_input(&L->gate_up, h, n, &prep);
        }
        product(&L->gate_up, h, n, &prep, gu);
#pragma omp single
        {
            for (int r = 0; r < n; r++) {
                const float *g = gu + 2 * r * ffn, *u = g + ffn;
                for (int i = 0; i < ffn; i++) act[r * ffn + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            }
            prepare_input(&L->down, act, n, &prep);
        }
        product(&L->down, act, n, &prep, tmp);
#pragma omp single
        for (int i = 0; i < n * d; i++) x[i] += tmp[i];
    }

    for (int r = 0; r < n; r++) rms_norm(x + r * d, m->final_norm, h + r * d, d, m->eps);
    prepare_input(&m->lm_head, h, n, &prep);
#pragma omp parallel num_threads(threads)
    product(&m->lm_head, h, n, &prep, logits);
}
