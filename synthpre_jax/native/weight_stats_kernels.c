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

/* max(x), min(x) and whether any element is not finite. Compared as integers (the sign-
 * magnitude bits mapped to a monotone int32 order) so that the loop vectorises; -0 orders
 * below +0, which changes nothing downstream (only |max| and |min| are used). */
void ws_minmax_f32(const float *x, int64_t n, float *hi_lo_bad) {
    const int32_t *b = (const int32_t *)x;
    int32_t hi = INT32_MIN, lo = INT32_MAX, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t v = b[i];
        bad |= (v & 0x7f800000) == 0x7f800000;
        int32_t k = v ^ ((v >> 31) & 0x7fffffff);
        hi = k > hi ? k : hi;
        lo = k < lo ? k : lo;
    }
    hi ^= (hi >> 31) & 0x7fffffff;
    lo ^= (lo >> 31) & 0x7fffffff;
    memcpy(&hi_lo_bad[0], &hi, 4);
    memcpy(&hi_lo_bad[1], &lo, 4);
    hi_lo_bad[2] = (float)bad;
}

/* sum of rint(x * scale): integers of magnitude <= 2**29 (the caller's grid), accumulated
 * in int64 (exact for any n) and returned as double (exact: the caller keeps n * 2**29 <=
 * 2**53). */
double ws_grid_sum_f32(const float *x, int64_t n, float scale) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += (int32_t)rintf(x[i] * scale);
    return (double)s;
}

/* One read of a piece of a tensor for two statistics: max/min/non-finite (as ws_minmax_f32),
 * then, from cache, the grid sums at the piece's own exponent e (|x| < 2**e, at least
 * floor_e) and at e + 1 and e + 2. The tensor's exponent is the largest of its pieces', so a
 * piece whose max is within a factor 4 of the tensor's (nearly all of them) needs no second
 * read from memory. */
void ws_minmax_gridsums_f32(const float *x, int64_t n, int32_t bits, int32_t floor_e,
                            float *hi_lo_bad, int32_t *e_out, double *sums3) {
    ws_minmax_f32(x, n, hi_lo_bad);
    sums3[0] = sums3[1] = sums3[2] = 0.0;
    *e_out = floor_e;
    if (hi_lo_bad[2] != 0.0f) return;
    float m = hi_lo_bad[0] > -hi_lo_bad[1] ? hi_lo_bad[0] : -hi_lo_bad[1];
    int e;
    frexpf(m, &e);
    if (e < floor_e) e = floor_e;
    *e_out = e;
    const float s0 = ldexpf(1.0f, bits - e), s1 = ldexpf(1.0f, bits - e - 1),
                s2 = ldexpf(1.0f, bits - e - 2);
    int64_t a0 = 0, a1 = 0, a2 = 0;
    for (int64_t i = 0; i < n; i++) {
        a0 += (int32_t)rintf(x[i] * s0);
        a1 += (int32_t)rintf(x[i] * s1);
        a2 += (int32_t)rintf(x[i] * s2);
    }
    sums3[0] = (double)a0;
    sums3[1] = (double)a1;
    sums3[2] = (double)a2;
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

/* natural log of a positive normal float32 (Cephes-style: m in [sqrt(1/2), sqrt(2)), degree-8
 * polynomial), branch-free so the loop vectorises. */
static inline float log_pos(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 126;   /* v = m * 2**e, m in [0.5, 1) */
    b = (b & 0x007fffffu) | 0x3f000000u;
    float m;
    memcpy(&m, &b, 4);
    int small = m < 0.70710678f;
    e -= small;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m, z2 = z * z;
    /* Cephes' logf polynomial (degree 8 in m) in Estrin's form with FMAs: the loop is
     * latency-bound, and Horner's chain of 16 dependent operations was half its time */
    float p01 = fmaf(7.0376836292e-2f, m, -1.1514610310e-1f);
    float p23 = fmaf(1.1676998740e-1f, m, -1.2420140846e-1f);
    float p45 = fmaf(1.4249322787e-1f, m, -1.6668057665e-1f);
    float p67 = fmaf(2.0000714765e-1f, m, -2.4999993993e-1f);
    float p03 = fmaf(p01, z, p23);
    float p47 = fmaf(p45, z, p67);
    float y = fmaf(fmaf(p03, z2, p47), m, 3.3333331174e-1f);
    y = y * m * z;
    float fe = (float)e;
    y = fmaf(-2.12194440e-4f, fe, y);
    y = fmaf(-0.5f, z, y);
    return m + y + 0.693359375f * fe;
}

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

/* One block of m <= BLOCK draws starting at flat index i0: three short loops over it (it
 * stays in L1) rather than one long one, which runs out of the 16 vector registers and spills
 * (3.2 ns per element against 1.9, one core); then the tail branch of erfinv (w >= 5, 0.34%
 * of the draws) for the few elements that need it. Inlined with m == BLOCK, so the full
 * blocks' loops have a constant trip count. */
static inline __attribute__((always_inline)) void draw_block(
        float *o, int64_t m, uint32_t i0, uint32_t k0, uint32_t k1, float mu, float scale) {
    float xs[BLOCK], ws[BLOCK];
    int tail = 0;
    for (int64_t j = 0; j < m; j++) {
        uint32_t bits = mix32(mix32((i0 + (uint32_t)j) ^ k0) + k1);
        int32_t top = (int32_t)(bits >> 8);
        xs[j] = (float)(top * 2 - 16777215) * 5.9604644775390625e-8f;
    }
    for (int64_t j = 0; j < m; j++)
        ws[j] = -log_pos((1.0f - xs[j]) * (1.0f + xs[j]));
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
    p->out[i] = ws_grid_sum_f32(p->x[i], p->n[i], p->scale[i]);
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
