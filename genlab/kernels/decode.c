/* One decoding step of genlab's Transformer (models/transformer.py) for one sequence, in C: every
 * layer's norms, fused q/k/v product, rotary positions, cache write, grouped-query attention, output
 * product, SwiGLU MLP, and the LM head, for the token at position `pos`.
 *
 * Why: in eager PyTorch a 30-layer model's step is about 400 small operators, and on a CPU their
 * dispatch costs more than the arithmetic of the products themselves. Here the step is one call, one
 * OpenMP parallel region whose threads split each product's output rows (and attention's heads);
 * the serial parts between products are a few microseconds of work.
 *
 * Weights are the model's own tensors (no copy): fp32, or genlab's int8/int4 formats through the
 * row kernels of qmatmul.c. Keys and values are the model's KVCache tensors, (1, n_kv_head, cap,
 * head_dim) each, fp32. The Python side (kernels/decode.py) builds the description below once. */

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

static void prepare_input(const gl_linear *w, const float *x, gl_prep *p) {
    if (w->kind != GL_Q4) return;
    int half = w->cols / 2, groups = w->cols / w->group;
    for (int i = 0; i < half; i++) {
        p->even[i] = x[2 * i];
        p->odd[i] = x[2 * i + 1];
    }
    for (int g = 0; g < groups; g++) {
        float s = 0;
        for (int i = 0; i < w->group; i++) s += x[g * w->group + i];
        p->sums[g] = s;
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

/* y = W x, the output rows shared among the threads of the enclosing parallel region (an orphaned
 * `omp for`: its implied barrier is what the next step waits on). */
static void product(const gl_linear *w, const float *x, const gl_prep *p, float *y) {
    int K = w->cols;
#pragma omp for schedule(static)
    for (int n = 0; n < w->rows; n++) {
        float acc;
        if (w->kind == GL_F32) {
            acc = dot_f32((const float *)w->weight + (int64_t)n * K, x, K);
        } else if (w->kind == GL_Q8) {
            q8_rows((const int8_t *)w->weight + (int64_t)n * K, x, 1, K, &acc);
            acc *= w->scale[n];
        } else {
            int groups = K / w->group;
            q4_rows((const uint8_t *)w->weight + (int64_t)n * (K / 2), p->even, p->odd, p->sums, 1, K, w->group,
                    w->scale + (int64_t)n * groups, &acc);
        }
        y[n] = acc;
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

/* scratch floats the step needs for this model at this position (the caller allocates them) */
long gl_decode_scratch(const gl_model *m, int pos) {
    int widest = m->d_model > m->ffn ? m->d_model : m->ffn;
    long qkv = (long)(m->n_head + 2 * m->n_kv_head) * m->head_dim;
    return 2L * m->d_model + qkv + (long)m->n_head * m->head_dim + 3L * m->ffn + (long)m->n_head * (pos + 1)
           + 2L * widest; /* + the int4 input scratch: even, odd (widest/2 each) and sums (< widest) */
}

/* x: the token's embedding (d_model floats; overwritten). k_cache[l], v_cache[l]: layer l's cache,
 * `cap` positions; position `pos` is written, 0..pos attended. logits: vocab floats out. */
void gl_decode(const gl_model *m, float *restrict x, int pos, float *const *k_cache, float *const *v_cache, int cap,
               float *restrict logits, float *restrict scratch, int threads) {
    const int d = m->d_model, hd = m->head_dim, nh = m->n_head, nkv = m->n_kv_head, groups = nh / nkv;
    const int widest = d > m->ffn ? d : m->ffn;
    float *h = scratch, *tmp = h + d, *qkv = tmp + d, *att = qkv + (nh + 2 * nkv) * hd, *gu = att + nh * hd,
          *act = gu + 2 * m->ffn, *scores = act + m->ffn, *q4 = scores + (long)nh * (pos + 1);
    gl_prep prep = {q4, q4 + widest / 2, q4 + widest};
    const float *cos = m->rope_cos + (int64_t)pos * hd, *sin = m->rope_sin + (int64_t)pos * hd;
    const float scale = 1.0f / sqrtf((float)hd);

#pragma omp parallel num_threads(threads)
    for (int l = 0; l < m->n_layer; l++) {
        const gl_layer *L = &m->layers[l];
        float *kc = k_cache[l], *vc = v_cache[l];
#pragma omp single
        {
            rms_norm(x, L->input_norm, h, d, m->eps);
            prepare_input(&L->qkv, h, &prep);
        }
        product(&L->qkv, h, &prep, qkv);
#pragma omp single
        {
            for (int j = 0; j < nh + nkv; j++) rotate(qkv + j * hd, cos, sin, hd); /* query and key heads */
            for (int j = 0; j < nkv; j++) {
                memcpy(kc + ((int64_t)j * cap + pos) * hd, qkv + (nh + j) * hd, sizeof(float) * hd);
                memcpy(vc + ((int64_t)j * cap + pos) * hd, qkv + (nh + nkv + j) * hd, sizeof(float) * hd);
            }
        }
#pragma omp for schedule(static)
        for (int j = 0; j < nh; j++) { /* query head j reads key/value head j / groups */
            const float *q = qkv + j * hd, *K = kc + (int64_t)(j / groups) * cap * hd,
                        *V = vc + (int64_t)(j / groups) * cap * hd;
            float *s = scores + (int64_t)j * (pos + 1), best = -INFINITY, total = 0;
            for (int t = 0; t <= pos; t++) {
                s[t] = dot_f32(q, K + (int64_t)t * hd, hd) * scale;
                best = s[t] > best ? s[t] : best;
            }
            for (int t = 0; t <= pos; t++) total += (s[t] = expf(s[t] - best));
            float *y = att + j * hd;
            for (int i = 0; i < hd; i++) y[i] = 0;
            for (int t = 0; t <= pos; t++) {
                float w = s[t] / total;
                const float *v = V + (int64_t)t * hd;
                for (int i = 0; i < hd; i++) y[i] += w * v[i];
            }
        }
#pragma omp single
        prepare_input(&L->o, att, &prep);
        product(&L->o, att, &prep, tmp);
#pragma omp single
        {
            for (int i = 0; i < d; i++) x[i] += tmp[i];
            rms_norm(x, L->post_attn_norm, h, d, m->eps);
            prepare_input(&L->gate_up, h, &prep);
        }
        product(&L->gate_up, h, &prep, gu);
#pragma omp single
        {
            for (int i = 0; i < m->ffn; i++) {
                float g = gu[i];
                act[i] = g / (1.0f + expf(-g)) * gu[m->ffn + i];
            }
            prepare_input(&L->down, act, &prep);
        }
        product(&L->down, act, &prep, tmp);
#pragma omp single
        for (int i = 0; i < d; i++) x[i] += tmp[i];
    }

    rms_norm(x, m->final_norm, h, d, m->eps);
    prepare_input(&m->lm_head, h, &prep);
#pragma omp parallel num_threads(threads)
    product(&m->lm_head, h, &prep, logits);
}
