/* CPU kernels of the weight-statistics transform (synthpre_jax/weight_stats_native.py).
 *
 * The statistics kernels reproduce the XLA programs of weight_stats.py operation for
 * operation in IEEE float32 (no contraction into FMAs: build with -ffp-contract=off), and their
 * sums are of integers below 2**53 in double, so they are exact: any split of the work gives
 * the XLA result bit for bit. The draw kernel computes the same hash bits as counter_rng and
 * the same inverse CDF with its own log, so draws agree with XLA's to a few float32 ulps.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* ---- threads ---------------------------------------------------------------------------
 * Each pass over the tree is one call: `nthreads` threads (the caller's among them) take the
 * jobs (pieces of ~2**18 elements) in turn from an atomic counter. Threading here rather than
 * in Python: a piece takes ~80 us to read, and Python threads handing out pieces held the
 * GIL long enough between calls that two threads read no faster than one. */
typedef void (*job_fn)(const void *ctx, int64_t i);

struct runner {
    job_fn fn;
    const void *ctx;
    int64_t n;
    atomic_llong next;
};

static void *run_worker(void *arg) {
    struct runner *r = (struct runner *)arg;
    for (;;) {
        int64_t i = atomic_fetch_add(&r->next, 1);
        if (i >= r->n) return NULL;
        r->fn(r->ctx, i);
    }
}

#define MAX_THREADS 256

/* fn(ctx, i) for i in [0, n); a thread that cannot be started leaves its share to the others. */
static void run_jobs(int nthreads, int64_t n, job_fn fn, const void *ctx) {
    struct runner r = {fn, ctx, n, 0};
    pthread_t threads[MAX_THREADS];
    int started = 0;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > n) nthreads = (int)n;
    for (int k = 1; k < nthreads; k++)
        if (pthread_create(&threads[started], NULL, run_worker, &r) == 0) started++;
    run_worker(&r);
    for (int k = 0; k < started; k++) pthread_join(threads[k], NULL);
}

/* max(x), min(x) and whether any element is not finite, as monotone int32 keys: the
 * sign-magnitude bits mapped to an integer order, so that the loop vectorises. -0 orders below
 * +0, which changes nothing downstream (only |max| and |min| are used). */
static void minmax_keys(const float *x, int64_t n, int32_t *hi_io, int32_t *lo_io,
                        int32_t *bad_io) {
    const int32_t *b = (const int32_t *)x;
    int32_t hi = *hi_io, lo = *lo_io, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t v = b[i];
        bad |= (v & 0x7f800000) == 0x7f800000;
        int32_t k = v ^ ((v >> 31) & 0x7fffffff);
        hi = k > hi ? k : hi;
        lo = k < lo ? k : lo;
    }
    *hi_io = hi;
    *lo_io = lo;
    *bad_io |= bad;
}

static float key_to_float(int32_t k) {
    k ^= (k >> 31) & 0x7fffffff;
    float f;
    memcpy(&f, &k, 4);
    return f;
}

/* sum of rint(x * scale): integers of magnitude <= 2**29 (the caller's grid), accumulated
 * in int64 (exact for any n) */
static int64_t grid_sum(const float *x, int64_t n, float scale) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += (int32_t)rintf(x[i] * scale);
    return s;
}

#define SUB 4096  /* elements of a sub-block: 16 KB, read from memory once and kept in L1 */

/* The grid sums at three scales, plain C (vectorised by the compiler). */
static inline void grid_sums3_plain(const float *x, int64_t n, float s0, float s1, float s2,
                                    int64_t *acc) {
    int64_t a0 = 0, a1 = 0, a2 = 0;
    for (int64_t i = 0; i < n; i++) {
        a0 += (int32_t)rintf(x[i] * s0);
        a1 += (int32_t)rintf(x[i] * s1);
        a2 += (int32_t)rintf(x[i] * s2);
    }
    acc[0] += a0;
    acc[1] += a1;
    acc[2] += a2;
}

/* The grid sums at three scales of one sub-block (in L1), prefetching the next sub-block
 * meanwhile so that its read from memory overlaps this arithmetic. */
#if defined(__AVX2__)
#include <immintrin.h>

static inline __m256i add_widened(__m256i acc, __m256i v) {  /* acc (4 x int64) += v (8 x int32) */
    return _mm256_add_epi64(acc, _mm256_add_epi64(
        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1))));
}

static inline int64_t lanes_sum(__m256i v) {
    int64_t t[4];
    _mm256_storeu_si256((__m256i *)t, v);
    return t[0] + t[1] + t[2] + t[3];
}

/* Widening each grid value to int64 was most of the work. |q| <= 2**29 at scale s0, 2**28 at
 * s1 and 2**27 at s2, so 3, 6 and 12 of them sum exactly in int32 lanes before one widening.
 * _mm256_cvtps_epi32 rounds to nearest even, as rintf does (the default rounding mode, which
 * the scalar code assumes as well). */
static void grid_sums3(const float *x, int64_t n, const float *next, float s0, float s1,
                       float s2, int64_t *acc) {
    const __m256 v0 = _mm256_set1_ps(s0), v1 = _mm256_set1_ps(s1), v2 = _mm256_set1_ps(s2);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, t1 = a0, t2 = a0;
    int64_t i = 0, groups = 0;
    for (; i + 24 <= n; i += 24, groups++) {
        if (next) {
            __builtin_prefetch(next + i, 0, 3);
            __builtin_prefetch(next + i + 16, 0, 3);
        }
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8),
                     x2 = _mm256_loadu_ps(x + i + 16);
#define Q(xv, sv) _mm256_cvtps_epi32(_mm256_mul_ps(xv, sv))
#define Q3(sv) _mm256_add_epi32(_mm256_add_epi32(Q(x0, sv), Q(x1, sv)), Q(x2, sv))
        a0 = add_widened(a0, Q3(v0));
        t1 = _mm256_add_epi32(t1, Q3(v1));
        t2 = _mm256_add_epi32(t2, Q3(v2));
#undef Q3
#undef Q
        if (groups % 2 == 1) {
            a1 = add_widened(a1, t1);
            t1 = _mm256_setzero_si256();
        }
        if (groups % 4 == 3) {
            a2 = add_widened(a2, t2);
            t2 = _mm256_setzero_si256();
        }
    }
    a1 = add_widened(a1, t1);
    a2 = add_widened(a2, t2);
    acc[0] += lanes_sum(a0);
    acc[1] += lanes_sum(a1);
    acc[2] += lanes_sum(a2);
    grid_sums3_plain(x + i, n - i, s0, s1, s2, acc);
}
#else
static void grid_sums3(const float *x, int64_t n, const float *next, float s0, float s1,
                       float s2, int64_t *acc) {
    for (int64_t i = 0; i < n; i += 16) {
        if (next) __builtin_prefetch(next + i, 0, 3);
        grid_sums3_plain(x + i, n - i < 16 ? n - i : 16, s0, s1, s2, acc);
    }
}
#endif

static int32_t exponent_of(float m, int32_t floor_e) {  /* |x| <= m < 2**e, at least floor_e */
    int e;
    frexpf(m, &e);
    return e < floor_e ? floor_e : e;
}

/* One read of a piece of a tensor for two statistics: max(x), min(x) and whether any element
 * is not finite, and the grid sums sum(rint(x * 2**(bits - f))) at f = e, e + 1, e + 2, e the
 * piece's exponent (|x| < 2**e, at least floor_e; floor_e itself for a piece of zeros, whose
 * sums are 0 at any exponent). The tensor's exponent is the largest of its pieces', so a piece
 * whose max is within a factor 4 of the tensor's (nearly all of them) needs no second read
 * from memory.
 *
 * The piece streams through L1 in sub-blocks: each sub-block's max/min first, then its sums
 * at the running exponent (the largest so far) and the two above it. When a later sub-block
 * raises the running exponent by d, the sums at the exponents that were already running carry
 * over, and each new one is completed for the earlier sub-blocks at the end (they are still in
 * cache). The sums are of the same integers as over the whole piece at once, so they are
 * exact and equal. */
void ws_minmax_gridsums_f32(const float *x, int64_t n, int32_t bits, int32_t floor_e,
                            float *hi_lo_bad, int32_t *e_out, double *sums3) {
    int32_t hi = INT32_MIN, lo = INT32_MAX, bad = 0;
    int64_t acc[3] = {0, 0, 0}, start[3] = {0, 0, 0};  /* acc[j]: exponent e + j, from start[j] */
    int32_t e = INT32_MIN;  /* none yet: every sub-block so far was zeros */
    sums3[0] = sums3[1] = sums3[2] = 0.0;
    *e_out = floor_e;
    for (int64_t i0 = 0; i0 < n; i0 += SUB) {
        const int64_t m = n - i0 < SUB ? n - i0 : SUB;
        int32_t sub_hi = INT32_MIN, sub_lo = INT32_MAX;
        minmax_keys(x + i0, m, &sub_hi, &sub_lo, &bad);
        hi = sub_hi > hi ? sub_hi : hi;
        lo = sub_lo < lo ? sub_lo : lo;
        if (bad) {  /* inf or NaN: the caller reports the tensor; max/min of the rest only */
            if (i0 + m < n) minmax_keys(x + i0 + m, n - i0 - m, &hi, &lo, &bad);
            break;
        }
        const float sh = key_to_float(sub_hi), sl = key_to_float(sub_lo);
        const float sm = sh > -sl ? sh : -sl;
        if (sm == 0.0f) continue;  /* zeros add nothing at any exponent */
        const int32_t se = exponent_of(sm, floor_e);
        if (se > e) {
            if (e == INT32_MIN) {  /* the first non-zero sub-block: all before it were zeros */
                acc[0] = acc[1] = acc[2] = 0;
                start[0] = start[1] = start[2] = 0;
            } else {
                const int32_t d = se - e;
                for (int j = 0; j < 3; j++) {
                    acc[j] = j + d <= 2 ? acc[j + d] : 0;
                    start[j] = j + d <= 2 ? start[j + d] : i0;
                }
            }
            e = se;
        }
        grid_sums3(x + i0, m, i0 + m < n ? x + i0 + SUB : NULL, ldexpf(1.0f, bits - e),
                   ldexpf(1.0f, bits - e - 1), ldexpf(1.0f, bits - e - 2), acc);
    }
    hi_lo_bad[0] = key_to_float(hi);
    hi_lo_bad[1] = key_to_float(lo);
    hi_lo_bad[2] = (float)bad;
    if (bad || e == INT32_MIN) return;
    for (int j = 0; j < 3; j++)  /* the earlier sub-blocks of exponents that started late */
        if (start[j] > 0) acc[j] += grid_sum(x, start[j], ldexpf(1.0f, bits - e - j));
    *e_out = e;
    for (int j = 0; j < 3; j++) sums3[j] = (double)acc[j];
}

/* sum of rint(((x - mu) * kscale)**2 * scale) (see _tensor_squared_deviation_parts). */
double ws_sqdev_sum_f32(const float *x, int64_t n, float mu, float kscale, float scale) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = (x[i] - mu) * kscale;
        s += (int32_t)rintf((d * d) * scale);
    }
    return (double)s;
}

/* ---- draws ---------------------------------------------------------------------------- */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21F0AAADu;
    x ^= x >> 15;
    x *= 0xD35A2D97u;
    return x ^ (x >> 15);
}

/* -log(u), u = 1 - x**2 = m * 2**e (m in [1, 2)) a positive normal float32, from a table: the
 * top three bits of m pick c_i = 1 + (i + 1/2) / 8; r = m / c_i - 1 is within +-1/17, where
 * log1p(r) needs only a degree-5 polynomial (error r**6 / 6 < 1e-8). Over every u the draws
 * take, |error| <= 5.4e-7 (2.9e-7 where w < 5), like Cephes' degree-8 logf (4.8e-7), in
 * about half the vector instructions. The signs are folded into the tables and
 * coefficients. The scalar and the AVX2 forms do the same float32 operations, so every build
 * draws the same values. */
static const float LOG_INV_C[8] __attribute__((aligned(32))) = {  /* 1 / c_i, rounded */
    0.941176474f, 0.842105269f, 0.761904776f, 0.695652187f,
    0.639999986f, 0.592592597f, 0.551724136f, 0.516129017f};
static const float NEG_LOG_C[8] __attribute__((aligned(32))) = {  /* log(LOG_INV_C[i]) */
    -6.062461808e-02f, -1.718502492e-01f, -2.719337046e-01f, -3.629054725e-01f,
    -4.462871253e-01f, -5.232481360e-01f, -5.947071314e-01f, -6.613985300e-01f};

static inline float neg_log1p_small(float r) {  /* -log1p(r) for |r| <= 1/17 */
    float p = fmaf(r, -0.2f, 0.25f);
    p = fmaf(p, r, -0.33333333f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, -1.0f);
    return p * r;
}

/* w = -log(1 - x**2), 1 - x**2 taken with one rounding (an FMA) */
static inline float neg_log_1mx2(float x) {
    const float u = fmaf(-x, x, 1.0f);
    uint32_t b;
    memcpy(&b, &u, 4);
    const int32_t e = (int32_t)(b >> 23) - 127;
    const uint32_t i = (b >> 20) & 7;
    const uint32_t mb = (b & 0x007fffffu) | 0x3f800000u;
    float m;
    memcpy(&m, &mb, 4);
    return fmaf((float)e, -0.69314718f,
                NEG_LOG_C[i] + neg_log1p_small(fmaf(m, LOG_INV_C[i], -1.0f)));
}

#if defined(__AVX2__)
/* neg_log_1mx2 of 8 draws, the table read with one permute per column */
static inline void neg_log_1mx2_8(const float *x, float *w) {
    const __m256 xv = _mm256_loadu_ps(x);
    const __m256 u = _mm256_fnmadd_ps(xv, xv, _mm256_set1_ps(1.0f));
    const __m256i b = _mm256_castps_si256(u);
    const __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(127));
    const __m256i i = _mm256_srli_epi32(b, 20);  /* the permute reads its low 3 bits */
    const __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_and_si256(b, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
    const __m256 inv = _mm256_permutevar8x32_ps(_mm256_load_ps(LOG_INV_C), i);
    const __m256 lc = _mm256_permutevar8x32_ps(_mm256_load_ps(NEG_LOG_C), i);
    const __m256 r = _mm256_fmadd_ps(m, inv, _mm256_set1_ps(-1.0f));
    __m256 p = _mm256_fmadd_ps(r, _mm256_set1_ps(-0.2f), _mm256_set1_ps(0.25f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-0.33333333f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-1.0f));
    p = _mm256_mul_ps(p, r);
    _mm256_storeu_ps(w, _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), _mm256_set1_ps(-0.69314718f),
                                        _mm256_add_ps(lc, p)));
}
#endif

static inline float erfinv_tail(float w, float x) {
    float s = sqrtf(w) - 3.0f;
    float p = -0.000200214257f;
    p = fmaf(p, s, 0.000100950558f);
    p = fmaf(p, s, 0.00134934322f);
    p = fmaf(p, s, -0.00367342844f);
    p = fmaf(p, s, 0.00573950773f);
    p = fmaf(p, s, -0.0076224613f);
    p = fmaf(p, s, 0.00943887047f);
    p = fmaf(p, s, 1.00167406f);
    p = fmaf(p, s, 2.83297682f);
    return p * x;
}

#define BLOCK 64

/* mu + scale * erfinv(x) of a block of m <= BLOCK uniforms xs in (-1, 1): the log and the
 * polynomial as two short loops over the block (it stays in L1) rather than one long one,
 * which runs out of the 16 vector registers and spills; then the tail branch of erfinv
 * (w >= 5, 0.34% of the draws) for the few elements that need it. */
static inline __attribute__((always_inline)) void normals_block(
        const float *xs, int64_t m, float *o, float mu, float scale) {
    float ws[BLOCK];
    int tail = 0;
    int64_t j1 = 0;
#if defined(__AVX2__)
    for (; j1 + 8 <= m; j1 += 8) neg_log_1mx2_8(xs + j1, ws + j1);
#endif
    for (; j1 < m; j1++) ws[j1] = neg_log_1mx2(xs[j1]);
    for (int64_t j = 0; j < m; j++) {
        float x = xs[j], w = ws[j];
        float t = w - 2.5f;
        /* Giles' central polynomial (a0 t^8 + ... + a8) in Estrin's form */
        float t2 = t * t, t4 = t2 * t2;
        float low = fmaf(fmaf(-0.00125372503f, t, -0.00417768164f), t2,
                         fmaf(0.246640727f, t, 1.50140941f));
        float mid = fmaf(fmaf(3.43273939e-07f, t, -3.5233877e-06f), t2,
                         fmaf(-4.39150654e-06f, t, 0.00021858087f));
        float c = fmaf(fmaf(2.81022636e-08f, t4, mid), t4, low);
        tail |= w >= 5.0f;
        o[j] = fmaf(scale, c * x, mu);
    }
    if (tail) {
        for (int64_t j = 0; j < m; j++)
            if (ws[j] >= 5.0f) o[j] = fmaf(scale, erfinv_tail(ws[j], xs[j]), mu);
    }
}

static inline float uniform_of_top(int32_t top) {
    /* counter_rng's x = (2 top - 2**24 + 1) / 2**24 in (-1, 1), exactly, in one FMA */
    return fmaf((float)top, 1.1920928955078125e-7f, -0.99999994039535522f);
}

/* One block of m <= BLOCK draws starting at flat index i0: the hash into uniforms (a third
 * short loop), then `normals_block`. Inlined with m == BLOCK, so the full blocks' loops have
 * a constant trip count (3.2 ns per element as one fused loop, 1.4 as three, one core). */
static inline __attribute__((always_inline)) void draw_block(
        float *o, int64_t m, uint32_t i0, uint32_t k0, uint32_t k1, float mu, float scale) {
    float xs[BLOCK];
    for (int64_t j = 0; j < m; j++)
        xs[j] = uniform_of_top((int32_t)(mix32(mix32((i0 + (uint32_t)j) ^ k0) + k1) >> 8));
    normals_block(xs, m, o, mu, scale);
}

/* The standard normals of given 24-bit uniforms (the top bits of the hash), as the draws
 * compute them: lets a test check the inverse CDF at every one of the 2**24 inputs. */
void ws_normals_of_tops(const int32_t *top, int64_t n, float *out) {
    float xs[BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += BLOCK) {
        const int64_t m = n - j0 < BLOCK ? n - j0 : BLOCK;
        for (int64_t j = 0; j < m; j++) xs[j] = uniform_of_top(top[j0 + j]);
        normals_block(xs, m, out + j0, 0.0f, 1.41421356237309515f);
    }
}

/* out[r * rowlen + j] = rule(z(base[r] + j)), z the counter_rng normal of flat index i.
 * rule 0: sigma * z; rule 1: mu + sigma * z. */
void ws_draw_f32(float *out, const int64_t *base, int64_t nrows, int64_t rowlen, uint32_t k0,
                 uint32_t k1, int rule, float mu, float sigma) {
    const float mu_eff = rule ? mu : 0.0f;
    const float scale = 1.41421356237309515f * sigma;  /* z = sqrt(2) erfinv(x) */
    for (int64_t r = 0; r < nrows; r++) {
        float *o = out + r * rowlen;
        uint32_t b0 = (uint32_t)base[r];
        int64_t j0 = 0;
        for (; j0 + BLOCK <= rowlen; j0 += BLOCK)
            draw_block(o + j0, BLOCK, b0 + (uint32_t)j0, k0, k1, mu_eff, scale);
        if (j0 < rowlen)
            draw_block(o + j0, rowlen - j0, b0 + (uint32_t)j0, k0, k1, mu_eff, scale);
    }
}

/* ---- whole passes ---------------------------------------------------------------------
 * One call per pass over the tree, the pieces given as parallel arrays (job i: x[i], n[i],
 * its parameters [i] and its results at [i] or [3 * i]). */
struct minmax_sums_pass {
    const float *const *x;
    const int64_t *n;
    const int32_t *bits;
    int32_t floor_e;
    float *hi_lo_bad;
    int32_t *e;
    double *sums;
};

static void minmax_sums_job(const void *ctx, int64_t i) {
    const struct minmax_sums_pass *p = (const struct minmax_sums_pass *)ctx;
    ws_minmax_gridsums_f32(p->x[i], p->n[i], p->bits[i], p->floor_e, p->hi_lo_bad + 3 * i,
                           p->e + i, p->sums + 3 * i);
}

void ws_pass_minmax_gridsums(int nthreads, int64_t jobs, const float *const *x, const int64_t *n,
                             const int32_t *bits, int32_t floor_e, float *hi_lo_bad, int32_t *e,
                             double *sums) {
    struct minmax_sums_pass p = {x, n, bits, floor_e, hi_lo_bad, e, sums};
    run_jobs(nthreads, jobs, minmax_sums_job, &p);
}

struct grid_sum_pass {
    const float *const *x;
    const int64_t *n;
    const float *scale;
    double *out;
};

static void grid_sum_job(const void *ctx, int64_t i) {
    const struct grid_sum_pass *p = (const struct grid_sum_pass *)ctx;
    p->out[i] = (double)grid_sum(p->x[i], p->n[i], p->scale[i]);  /* exact: n * 2**29 <= 2**53 */
}

void ws_pass_grid_sum(int nthreads, int64_t jobs, const float *const *x, const int64_t *n,
                      const float *scale, double *out) {
    struct grid_sum_pass p = {x, n, scale, out};
    run_jobs(nthreads, jobs, grid_sum_job, &p);
}

struct sqdev_pass {
    const float *const *x;
    const int64_t *n;
    const float *mu, *kscale, *scale;
    double *out;
};

static void sqdev_job(const void *ctx, int64_t i) {
    const struct sqdev_pass *p = (const struct sqdev_pass *)ctx;
    p->out[i] = ws_sqdev_sum_f32(p->x[i], p->n[i], p->mu[i], p->kscale[i], p->scale[i]);
}

void ws_pass_sqdev(int nthreads, int64_t jobs, const float *const *x, const int64_t *n,
                   const float *mu, const float *kscale, const float *scale, double *out) {
    struct sqdev_pass p = {x, n, mu, kscale, scale, out};
    run_jobs(nthreads, jobs, sqdev_job, &p);
}

struct draw_pass {
    float *const *out;
    const int64_t *const *base;
    const int64_t *nrows, *rowlen;
    const uint32_t *k0, *k1;
    const int32_t *rule;
    const float *mu, *sigma;
};

static void draw_job(const void *ctx, int64_t i) {
    const struct draw_pass *p = (const struct draw_pass *)ctx;
    ws_draw_f32(p->out[i], p->base[i], p->nrows[i], p->rowlen[i], p->k0[i], p->k1[i], p->rule[i],
                p->mu[i], p->sigma[i]);
}

void ws_pass_draw(int nthreads, int64_t jobs, float *const *out, const int64_t *const *base,
                  const int64_t *nrows, const int64_t *rowlen, const uint32_t *k0,
                  const uint32_t *k1, const int32_t *rule, const float *mu, const float *sigma) {
    struct draw_pass p = {out, base, nrows, rowlen, k0, k1, rule, mu, sigma};
    run_jobs(nthreads, jobs, draw_job, &p);
}
