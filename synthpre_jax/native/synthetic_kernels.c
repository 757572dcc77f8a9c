/* Kernels of the synthetic generators (`synthpre_jax/synthetic/native.py` loads them).
 *
 * Each does in one pass what the generators otherwise do with many NumPy passes or a Python
 * loop, and gives the same values as that NumPy/Python twin (the tests compare them):
 * CPython set layouts (ps_rows), a radix sort (sk_sort_*), per-row argsort, first
 * occurrences, sublist search and the sort target (sk_*), the counter-based numbers and the
 * samplers built on them (rng_*), and the nesting language's stack walk (nl_walk).
 *
 * CPython 3.11 `set` layouts of non-negative int keys, for many rows at once.
 * The set-operation tasks' targets are `list(set(a).union(set(b)))` and the like, so their
 * order is CPython's hash-table layout (Objects/setobject.c). This is the same emulation as
 * `synthetic/pyset.py`'s EmulatedSet (which the tests check against the interpreter), written
 * in C so that a row costs ~2 us instead of the ~20 us of building Python lists and sets.
 * For a key k with 0 <= k < 2**61 - 1 the hash is k itself, so only the table logic matters:
 * open addressing with LINEAR_PROBES linear probes then perturbed probing, growth when
 * fill*5 >= mask*3, set_merge's up-front resize and table copy, and the strategies of
 * intersection and difference (including the copy-then-discard path, which leaves dummies).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LINEAR_PROBES 9
#define PERTURB_SHIFT 5
#define MINSIZE 8
#define EMPTY (-1)
#define DUMMY (-2)

typedef int32_t slot_t;  /* a key (>= 0), EMPTY or DUMMY */

typedef struct {
    slot_t *table;
    uint64_t mask;
    int64_t fill, used;
    slot_t small[MINSIZE];
} eset;

static void es_init(eset *s) {
    s->table = s->small;
    s->mask = MINSIZE - 1;
    s->fill = s->used = 0;
    for (int i = 0; i < MINSIZE; i++) s->small[i] = EMPTY;
}

/* Tables come from a per-thread arena while ps_rows runs (reset for every row: no malloc per
 * table), else from malloc; table_free tells them apart by address. */
static __thread slot_t *arena_base, *arena_next, *arena_end;

static slot_t *table_alloc(uint64_t n) {
    if (arena_next && n <= (uint64_t)(arena_end - arena_next)) {
        slot_t *p = arena_next;
        arena_next += n;
        return p;
    }
    return malloc(n * sizeof(slot_t));
}

static void table_free(slot_t *p) {
    if (!(arena_base && p >= arena_base && p < arena_end)) free(p);
}

static void es_free(eset *s) {
    if (s->table != s->small) table_free(s->table);
    s->table = s->small;
}

/* set_insert_clean: the table has no dummies and no `key`. */
static void insert_clean(slot_t *t, uint64_t mask, slot_t key) {
    uint64_t perturb = (uint64_t)key, i = (uint64_t)key & mask;
    for (;;) {
        if (t[i] == EMPTY) { t[i] = key; return; }
        if (i + LINEAR_PROBES <= mask) {
            for (uint64_t j = i + 1; j <= i + LINEAR_PROBES; j++)
                if (t[j] == EMPTY) { t[j] = key; return; }
        }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
    }
}

/* set_table_resize. Returns -1 when out of memory. */
static int resize(eset *s, int64_t minused) {
    uint64_t newsize = MINSIZE;
    while ((int64_t)newsize <= minused) newsize <<= 1;
    slot_t copy[MINSIZE];
    slot_t *old = s->table;
    uint64_t oldmask = s->mask;
    slot_t *fresh;
    if (newsize == MINSIZE) {
        if (old == s->small) {
            if (s->fill == s->used) return 0;  /* small table, no dummies: nothing to do */
            memcpy(copy, s->small, sizeof copy);
            old = copy;
        }
        fresh = s->small;
    } else {
        fresh = table_alloc(newsize);
        if (!fresh) return -1;
    }
    for (uint64_t i = 0; i < newsize; i++) fresh[i] = EMPTY;
    s->table = fresh;
    s->mask = newsize - 1;
    s->fill = s->used;
    for (uint64_t i = 0; i <= oldmask; i++)
        if (old[i] >= 0) insert_clean(fresh, s->mask, old[i]);
    if (old != s->small && old != copy && old != fresh) table_free(old);
    return 0;
}

/* set_lookkey: the slot holding `key`, or -1. Dummies are passed over. */
static int64_t lookup(const eset *s, slot_t key) {
    const slot_t *t = s->table;
    uint64_t mask = s->mask, perturb = (uint64_t)key, i = (uint64_t)key & mask;
    for (;;) {
        uint64_t probes = (i + LINEAR_PROBES <= mask) ? LINEAR_PROBES : 0;
        for (uint64_t j = i; j <= i + probes; j++) {
            if (t[j] == EMPTY) return -1;
            if (t[j] == key) return (int64_t)j;
        }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
    }
}

/* set_add_entry. */
static int add(eset *s, slot_t key) {
    slot_t *t = s->table;
    uint64_t mask = s->mask, perturb = (uint64_t)key, i = (uint64_t)key & mask;
    int64_t freeslot = -1;
    for (;;) {
        uint64_t probes = (i + LINEAR_PROBES <= mask) ? LINEAR_PROBES : 0;
        for (uint64_t j = i; j <= i + probes; j++) {
            slot_t e = t[j];
            if (e == EMPTY) {
                if (freeslot >= 0) {  /* reuse a dummy: fill unchanged */
                    t[freeslot] = key;
                    s->used++;
                    return 0;
                }
                t[j] = key;
                s->fill++;
                s->used++;
                if ((uint64_t)s->fill * 5 < mask * 3) return 0;
                return resize(s, s->used > 50000 ? s->used * 2 : s->used * 4);
            }
            if (e == key) return 0;
            if (e == DUMMY && freeslot < 0) freeslot = (int64_t)j;
        }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
    }
}

static void discard(eset *s, slot_t key) {
    int64_t j = lookup(s, key);
    if (j >= 0) {
        s->table[j] = DUMMY;
        s->used--;
    }
}

/* set_merge: update `s` from another set. */
static int merge(eset *s, const eset *o) {
    if (o == s || o->used == 0) return 0;
    if ((uint64_t)(s->fill + o->used) * 5 >= s->mask * 3)
        if (resize(s, (s->used + o->used) * 2)) return -1;
    if (s->fill == 0 && s->mask == o->mask && o->fill == o->used) {
        memcpy(s->table, o->table, (o->mask + 1) * sizeof(slot_t));
        s->fill = o->fill;
        s->used = o->used;
        return 0;
    }
    if (s->fill == 0) {
        s->fill = s->used = o->used;
        for (uint64_t i = 0; i <= o->mask; i++)
            if (o->table[i] >= 0) insert_clean(s->table, s->mask, o->table[i]);
        return 0;
    }
    for (uint64_t i = 0; i <= o->mask; i++)
        if (o->table[i] >= 0 && add(s, o->table[i])) return -1;
    return 0;
}

/* set(list): set_add_key per element, in order. */
static int from_list(eset *s, const int32_t *v, int64_t n) {
    es_init(s);
    for (int64_t i = 0; i < n; i++)
        if (add(s, v[i])) return -1;
    return 0;
}

static int intersection(eset *out, const eset *a, const eset *b) {
    es_init(out);
    if (a == b) return merge(out, a);
    const eset *big = a, *small = b;
    if (small->used > big->used) { big = b; small = a; }
    for (uint64_t i = 0; i <= small->mask; i++) {
        slot_t k = small->table[i];
        if (k >= 0 && lookup(big, k) >= 0 && add(out, k)) return -1;
    }
    return 0;
}

/* set_difference_update_internal, on a copy of the left operand. */
static int difference_update(eset *s, const eset *o) {
    eset tmp;
    int owned = 0;
    if ((o->used >> 3) > s->used) {
        if (intersection(&tmp, s, o)) { es_free(&tmp); return -1; }
        o = &tmp;
        owned = 1;
    }
    for (uint64_t i = 0; i <= o->mask; i++)
        if (o->table[i] >= 0) discard(s, o->table[i]);
    if (owned) es_free(&tmp);
    if ((uint64_t)(s->fill - s->used) <= s->mask / 4) return 0;
    return resize(s, s->used > 50000 ? s->used * 2 : s->used * 4);
}

static int difference(eset *out, const eset *a, const eset *b) {
    es_init(out);
    if ((a->used >> 2) > b->used) {  /* set_copy_and_difference */
        if (merge(out, a)) return -1;
        return difference_update(out, b);
    }
    for (uint64_t i = 0; i <= a->mask; i++) {
        slot_t k = a->table[i];
        if (k >= 0 && lookup(b, k) < 0 && add(out, k)) return -1;
    }
    return 0;
}

/* The keys in table order. Branch-free (about a third of the slots hold keys, so a branch
 * would mispredict often): every slot is written at out[n], so out needs mask + 1 slots. */
static int64_t emit(const eset *s, int32_t *out) {
    int64_t n = 0;
    for (uint64_t i = 0; i <= s->mask; i++) {
        slot_t k = s->table[i];
        out[n] = k;
        n += k >= 0;
    }
    return n;
}

/* ---- the same, faster, when every key is small -------------------------------------------
 * With keys below a few million, "is k in this row's operand" is one bit of a bitmap (4 KB
 * for T5's 32k ids: L1-resident), cleared word by word after each row. A key known to be
 * absent from a table without dummies goes where set_add_entry would put it: the first empty
 * slot of its probe sequence, which is what insert_clean finds. So set(list), the union's
 * second merge, the intersection and the plain difference need no key comparisons while
 * probing. */
#define BITMAP_LIMIT (1 << 22)

static inline int has_bit(const uint64_t *bits, int32_t k) {
    return (int)((bits[k >> 6] >> (k & 63)) & 1);
}

static void clear_bits(uint64_t *bits, const int32_t *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) bits[v[i] >> 6] = 0;
}

static int add_new(eset *s, slot_t key) {
    insert_clean(s->table, s->mask, key);
    s->fill++;
    s->used++;
    if ((uint64_t)s->fill * 5 < s->mask * 3) return 0;
    return resize(s, s->used > 50000 ? s->used * 2 : s->used * 4);
}

static int add_all_new(eset *s, const int32_t *keys, int64_t m) {
    for (int64_t i = 0; i < m; i++)
        if (add_new(s, keys[i])) return -1;
    return 0;
}

/* The row's distinct keys in first-occurrence order (a branch-free pass into `keys`, n
 * slots), marked in `bits`; returns how many. */
static int64_t distinct_bits(const int32_t *v, int64_t n, uint64_t *bits, int32_t *keys) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t k = v[i];
        keys[m] = k;
        m += !has_bit(bits, k);
        bits[k >> 6] |= (uint64_t)1 << (k & 63);
    }
    return m;
}

/* set(list) of a list whose distinct keys, in first-occurrence order, are keys[0:m]. */
static int build(eset *s, const int32_t *keys, int64_t m) {
    es_init(s);
    return add_all_new(s, keys, m);
}

/* The keys of s in table order whose membership in the other operand (its bits) is
 * `member`, into scratch (branch-free, like emit; scratch needs mask + 2 slots). */
static int64_t collect(const eset *s, const uint64_t *bits, int member, int32_t *scratch) {
    int64_t m = 0;
    for (uint64_t i = 0; i <= s->mask; i++) {
        slot_t k = s->table[i];
        scratch[m] = k;
        m += (k >= 0) & (has_bit(bits, k < 0 ? 0 : k) == member);
    }
    return m;
}

/* op 1..3 of rows whose distinct keys are ka[0:ma] and kb[0:mb] (marked in ba, bb): the
 * result in res (initialised). Only the tables an operation reads are built: the
 * intersection iterates the smaller set and the difference the left one (membership in the
 * other comes from its bits); which keys a copy-then-discard difference removes does not
 * depend on the order it removes them in, but it is the general code's, so it gets both. */
static int op_bits(int op, eset *res, eset *a, eset *b, const int32_t *ka, int64_t ma,
                   const int32_t *kb, int64_t mb, const uint64_t *ba, const uint64_t *bb,
                   int32_t *scratch) {
    if (op == 1) {
        if (build(a, ka, ma) || build(b, kb, mb) || merge(res, a)) return -1;
        if (res->fill == 0 || b->used == 0) return merge(res, b);
        if ((uint64_t)(res->fill + b->used) * 5 >= res->mask * 3
            && resize(res, (res->used + b->used) * 2)) return -1;
        return add_all_new(res, scratch, collect(b, ba, 0, scratch));
    }
    if (op == 2) {
        if (mb > ma)
            return build(a, ka, ma) || add_all_new(res, scratch, collect(a, bb, 1, scratch));
        return build(b, kb, mb) || add_all_new(res, scratch, collect(b, ba, 1, scratch));
    }
    if (build(a, ka, ma)) return -1;
    if ((ma >> 2) > mb) {  /* set_copy_and_difference: dummies, the general code */
        es_free(res);
        return build(b, kb, mb) || difference(res, a, b);
    }
    return add_all_new(res, scratch, collect(a, bb, 0, scratch));
}

/* For each row r: op 0 `list(set(a_r))`, 1 `list(set(a_r).union(set(b_r)))`,
 * 2 `list(set(a_r).intersection(set(b_r)))`, 3 `list(set(a_r) - set(b_r))`, where a_r is
 * av[as[r] : as[r] + al[r]] and b_r is bv[bs[r] : bs[r] + bl[r]] (ignored for op 0); keys
 * must be >= 0. The results go to out one after another (room: the total of al and bl),
 * row r's length to out_len[r]. Returns 0, or -1 when out of memory. */
int ps_rows(int op, int64_t rows, const int32_t *av, const int64_t *as, const int64_t *al,
            const int32_t *bv, const int64_t *bs, const int64_t *bl, int32_t *out,
            int64_t *out_len) {
    int32_t maxkey = 0;
    int64_t longest = 0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = as[r]; i < as[r] + al[r]; i++) if (av[i] > maxkey) maxkey = av[i];
        if (al[r] > longest) longest = al[r];
        if (!op) continue;
        for (int64_t i = bs[r]; i < bs[r] + bl[r]; i++) if (bv[i] > maxkey) maxkey = bv[i];
        if (bl[r] > longest) longest = bl[r];
    }
    /* scratch: a row's keys, or a table of one operand (<= 8 * longest + 8 slots), or the
     * result's table (<= 16 * longest + 8) for emit */
    /* scratch, then each operand's distinct keys (<= longest each) */
    int32_t *scratch = malloc(((size_t)longest * 18 + 16) * sizeof(int32_t));
    int32_t *ka = scratch ? scratch + longest * 16 + 8 : NULL, *kb = ka ? ka + longest + 4 : NULL;
    uint64_t *ba = NULL, *bb = NULL;
    if (scratch && maxkey < BITMAP_LIMIT) {
        ba = calloc((size_t)(maxkey >> 6) + 1, sizeof(uint64_t));
        bb = calloc((size_t)(maxkey >> 6) + 1, sizeof(uint64_t));
        if (!ba || !bb) { free(ba); free(bb); ba = bb = NULL; }
    }
    int err = scratch ? 0 : 1;
    size_t arena_slots = (size_t)longest * 64 + 1024;
    arena_base = arena_next = malloc(arena_slots * sizeof(slot_t));
    arena_end = arena_base ? arena_base + arena_slots : NULL;
    for (int64_t r = 0; r < rows && !err; r++) {
        eset a, b, res;
        arena_next = arena_base;
        const int32_t *ra = av + as[r], *rb = op ? bv + bs[r] : av;
        int64_t na = al[r], nb = op ? bl[r] : 0;
        es_init(&a);
        es_init(&b);
        es_init(&res);
        if (op == 0) {
            err = ba ? build(&a, ka, distinct_bits(ra, na, ba, ka)) : from_list(&a, ra, na);
            if (!err) out_len[r] = emit(&a, scratch);
        } else {
            if (ba) {
                int64_t ma = distinct_bits(ra, na, ba, ka), mb = distinct_bits(rb, nb, bb, kb);
                err = op_bits(op, &res, &a, &b, ka, ma, kb, mb, ba, bb, scratch);
            } else {
                err = from_list(&a, ra, na) || from_list(&b, rb, nb);
                if (!err && op == 1) err = merge(&res, &a) || merge(&res, &b);
                else if (!err && op == 2) err = intersection(&res, &a, &b);
                else if (!err) err = difference(&res, &a, &b);
            }
            if (!err) out_len[r] = emit(&res, scratch);
        }
        /* emitted into L1-resident scratch, then only the keys copied out */
        if (!err) {
            memcpy(out, scratch, (size_t)out_len[r] * sizeof(int32_t));
            out += out_len[r];
        }
        if (ba) {
            clear_bits(ba, ra, na);
            clear_bits(bb, rb, nb);
        }
        es_free(&a);
        es_free(&b);
        es_free(&res);
    }
    free(arena_base);
    arena_base = arena_next = arena_end = NULL;
    free(ba);
    free(bb);
    free(scratch);
    return err ? -1 : 0;
}

/* sk_first_index: pos[r] = the index in row r (v[off[r] : off[r + 1]]) of its first `sep`,
 * or -1. */
void sk_first_index(int64_t rows, const int32_t *v, const int64_t *off, int32_t sep,
                    int64_t *pos) {
    for (int64_t r = 0; r < rows; r++) {
        pos[r] = -1;
        for (int64_t i = off[r]; i < off[r + 1]; i++)
            if (v[i] == sep) { pos[r] = i - off[r]; break; }
    }
}

/* ---- LSD radix sort of non-negative integer keys --------------------------------------
 * np.sort is a comparison sort; on some CPUs (AMD Zen 4 with NumPy's AVX-512 dispatch,
 * whose compress-stores are microcoded there) it runs at 20-50 ns per key. The generators
 * sort keys of at most ~45 significant bits, which 11-bit digits cover in <= 5 passes of
 * ~1-2 ns per key each. Passes whose digit is the same for every key are skipped. */
#define RADIX_BITS 11
#define RADIX (1 << RADIX_BITS)

#define DEFINE_RADIX_SORT(NAME, T, MAXPASS)                                                  \
int NAME(int64_t n, T *keys, T *tmp, int bits) {                                             \
    int passes = (bits + RADIX_BITS - 1) / RADIX_BITS;                                       \
    if (passes > MAXPASS) passes = MAXPASS;                                                  \
    if (n < 2 || passes < 1) return 0;                                                       \
    uint32_t (*hist)[RADIX] = calloc((size_t)passes, sizeof *hist);                          \
    if (!hist) return -1;                                                                    \
    for (int64_t i = 0; i < n; i++) {                                                        \
        T k = keys[i];                                                                       \
        for (int p = 0; p < passes; p++) hist[p][(k >> (p * RADIX_BITS)) & (RADIX - 1)]++;  \
    }                                                                                        \
    T *src = keys, *dst = tmp;                                                               \
    for (int p = 0; p < passes; p++) {                                                       \
        int shift = p * RADIX_BITS;                                                          \
        uint32_t *h = hist[p];                                                               \
        if (h[(src[0] >> shift) & (RADIX - 1)] == (uint32_t)n) continue;                     \
        uint32_t sum = 0;                                                                    \
        for (int d = 0; d < RADIX; d++) { uint32_t c = h[d]; h[d] = sum; sum += c; }          \
        for (int64_t i = 0; i < n; i++) {                                                    \
            T k = src[i];                                                                    \
            dst[h[(k >> shift) & (RADIX - 1)]++] = k;                                        \
        }                                                                                    \
        T *t = src; src = dst; dst = t;                                                      \
    }                                                                                        \
    if (src != keys) memcpy(keys, src, (size_t)n * sizeof(T));                               \
    free(hist);                                                                              \
    return 0;                                                                                \
}

/* keys[0:n] sorted in place (tmp: n more keys of scratch); every key < 2**bits. n < 2**32. */
DEFINE_RADIX_SORT(sk_sort_u64, uint64_t, 6)
DEFINE_RADIX_SORT(sk_sort_u32, uint32_t, 3)

/* ---- per-row orders ------------------------------------------------------------------------
 * Orders within the rows of a block. */
/* The argsort of one row's L values u (in [0, 1)) into idx, their sorted values into key:
 * counting sort into 2L buckets (few values share one), then an insertion sort that has only
 * in-bucket neighbours to fix. cnt holds 2L + 1 slots, bucket L. */
static void bucket_argsort(const double *u, int64_t L, int64_t *idx, double *key, int64_t *cnt,
                           int64_t *bucket) {
    int64_t B = 2 * L;
    memset(cnt, 0, ((size_t)B + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < L; i++) {
        int64_t b = (int64_t)(u[i] * (double)B);
        b = b < B ? b : B - 1;
        bucket[i] = b;
        cnt[b + 1]++;
    }
    for (int64_t b = 0; b < B; b++) cnt[b + 1] += cnt[b];
    for (int64_t i = 0; i < L; i++) {
        int64_t at = cnt[bucket[i]]++;
        idx[at] = i;
        key[at] = u[i];
    }
    for (int64_t k = 1; k < L; k++) {
        double kx = key[k];
        int64_t x = idx[k], j = k;
        while (j > 0 && key[j - 1] > kx) { key[j] = key[j - 1]; idx[j] = idx[j - 1]; j--; }
        key[j] = kx;
        idx[j] = x;
    }
}

/* sk_row_argsort: perm = np.argsort(u + rows) for u in [0, 1) and non-decreasing row ids, as
 * a bucket sort within each row (bucket floor(u * 2L) for a row of L, then an insertion sort
 * that has only in-bucket neighbours to fix): one pass instead of a 63-bit sort of the whole
 * block. Returns 1 when two keys u + row (float64, as NumPy adds them) are not strictly
 * increasing in that order: a tie, whose order np.argsort decides, so the caller uses it. */
int sk_row_argsort(int64_t n, const double *u, const int64_t *rows, int64_t *perm) {
    if (n < 1) return 0;
    int64_t longest = 0;
    for (int64_t s = 0, e; s < n; s = e) {
        for (e = s + 1; e < n && rows[e] == rows[s]; e++) {}
        if (e - s > longest) longest = e - s;
    }
    int64_t *cnt = malloc(((size_t)longest * 2 + 1) * sizeof(int64_t));
    double *key = malloc((size_t)longest * sizeof(double));
    int64_t *bucket = malloc((size_t)longest * sizeof(int64_t));
    if (!cnt || !key || !bucket) { free(cnt); free(key); free(bucket); return -1; }
    for (int64_t s = 0, e; s < n; s = e) {
        for (e = s + 1; e < n && rows[e] == rows[s]; e++) {}
        bucket_argsort(u + s, e - s, perm + s, key, cnt, bucket);
        for (int64_t k = s; k < e; k++) perm[k] += s;
    }
    free(cnt);
    free(key);
    free(bucket);
    double prev = u[perm[0]] + (double)rows[perm[0]];  /* one IEEE add, as NumPy's */
    for (int64_t k = 1; k < n; k++) {
        double next = u[perm[k]] + (double)rows[perm[k]];
        if (!(next > prev)) return 1;
        prev = next;
    }
    return 0;
}

/* sk_first_in_rows: mask[i] = 1 where values[i] (0 <= v <= maxval) first occurs in its row
 * (rows given by their lengths), by a bitmap cleared after each row. */
int sk_first_in_rows(int64_t rows, const int64_t *lengths, const int32_t *values, int32_t maxval,
                     uint8_t *mask) {
    uint64_t *bits = calloc((size_t)(maxval >> 6) + 1, sizeof(uint64_t));
    if (!bits) return -1;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < lengths[r]; i++) {
            int32_t v = values[i];
            mask[i] = !has_bit(bits, v);
            bits[v >> 6] |= (uint64_t)1 << (v & 63);
        }
        clear_bits(bits, values, lengths[r]);
        values += lengths[r];
        mask += lengths[r];
    }
    free(bits);
    return 0;
}

/* sk_find_rows: out[r] = the first position of row r's query (qv[qs[r]:][:ql[r]]) inside its
 * seq (sv[ss[r]:][:sl[r]]), -1 when absent, 0 for an empty query (`find_sublist`). */
void sk_find_rows(int64_t rows, const int32_t *sv, const int64_t *ss, const int64_t *sl,
                  const int32_t *qv, const int64_t *qs, const int64_t *ql, int64_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *s = sv + ss[r], *q = qv + qs[r];
        int64_t ls = sl[r], lq = ql[r], at = -1;
        if (lq == 0) at = 0;
        for (int64_t i = 0; lq > 0 && i + lq <= ls; i++) {
            if (s[i] != q[0]) continue;
            int64_t j = 1;
            while (j < lq && s[i + j] == q[j]) j++;
            if (j == lq) { at = i; break; }
        }
        out[r] = at;
    }
}

/* sk_cut_rows: row r's values v[s[r]:][:len[r]] without the span [at[r], at[r] + cut[r])
 * when at[r] >= 0, one row after another into out (the delete task's target). */
void sk_cut_rows(int64_t rows, const int32_t *v, const int64_t *s, const int64_t *len,
                 const int64_t *at, const int64_t *cut, int32_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *row = v + s[r];
        if (at[r] < 0) {
            memcpy(out, row, (size_t)len[r] * sizeof(int32_t));
            out += len[r];
            continue;
        }
        memcpy(out, row, (size_t)at[r] * sizeof(int32_t));
        out += at[r];
        int64_t rest = len[r] - at[r] - cut[r];
        memcpy(out, row + at[r] + cut[r], (size_t)rest * sizeof(int32_t));
        out += rest;
    }
}

/* sk_count_rows: out[r] = how often probe[r] occurs in v[s[r]:][:len[r]] (the count task;
 * the search/delete screen). */
void sk_count_rows(int64_t rows, const int32_t *v, const int64_t *s, const int64_t *len,
                   const int32_t *probe, int64_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        int32_t x = probe[r];
        int64_t c = 0;
        for (int64_t i = 0; i < len[r]; i++) c += v[s[r] + i] == x;
        out[r] = c;
    }
}

/* sk_take_rows: rows idx[0], idx[1], ... of the ragged (v, starts, lengths), one after
 * another into out (`ragged.take_rows`). */
void sk_take_rows(int64_t n, const int32_t *v, const int64_t *starts, const int64_t *lengths,
                  const int64_t *idx, int32_t *out) {
    for (int64_t k = 0; k < n; k++) {
        int64_t r = idx[k];
        memcpy(out, v + starts[r], (size_t)lengths[r] * sizeof(int32_t));
        out += lengths[r];
    }
}

/* sk_sort_rows: the sort task's target for every row: seq stably sorted by each token's last
 * index in order, i.e. order[j] repeated once per seq token whose last order occurrence is j.
 * Values in [0, maxval]. out gets as many values as seq. Returns 0, -1 when out of memory,
 * or r + 1 when a token of row r's seq is not in its order. */
int64_t sk_sort_rows(int64_t rows, const int32_t *ov, const int64_t *ooff, const int32_t *sv,
                     const int64_t *soff, int32_t maxval, int32_t *out) {
    int64_t longest = 1;
    for (int64_t r = 0; r < rows; r++)
        if (ooff[r + 1] - ooff[r] > longest) longest = ooff[r + 1] - ooff[r];
    uint64_t *bits = calloc((size_t)(maxval >> 6) + 1, sizeof(uint64_t));
    int32_t *last = malloc(((size_t)maxval + 1) * sizeof(int32_t));
    int64_t *count = calloc((size_t)longest, sizeof(int64_t));
    int64_t rc = (bits && last && count) ? 0 : -1;
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        const int32_t *o = ov + ooff[r], *q = sv + soff[r];
        int64_t lo = ooff[r + 1] - ooff[r], ls = soff[r + 1] - soff[r];
        for (int64_t j = 0; j < lo; j++) {
            last[o[j]] = (int32_t)j;
            bits[o[j] >> 6] |= (uint64_t)1 << (o[j] & 63);
        }
        for (int64_t i = 0; i < ls; i++) {
            if (!has_bit(bits, q[i])) { rc = r + 1; break; }
            count[last[q[i]]]++;
        }
        for (int64_t j = 0; j < lo && rc == 0; j++)
            for (int64_t c = count[j]; c > 0; c--) *out++ = o[j];
        memset(count, 0, (size_t)lo * sizeof(int64_t));
        clear_bits(bits, o, lo);
    }
    free(bits);
    free(last);
    free(count);
    return rc;
}

/* ---- nested-dependency sentences: the stack walk of `nesting.NestingLanguageTask` ----------
 * Sentence s has n[s] arcs, heads[...] holds its n[s] heads and may_open[...] its 2 n[s] move
 * draws (both flat, sentence after sentence). At position t it opens its next arc when it
 * has arcs left, is below max_depth and is at depth 0 or may_open[t]; otherwise it closes
 * the arc on top of its stack. An opening writes the arc's head, a closing head + 1. */
void nl_walk(int64_t count, const int64_t *n, const uint8_t *may_open, const int32_t *heads,
             int32_t max_depth, int32_t *out) {
    int32_t stack[max_depth > 0 ? max_depth : 1];
    for (int64_t s = 0; s < count; s++) {
        int32_t depth = 0, opened = 0, ns = (int32_t)n[s];
        for (int64_t t = 0; t < 2 * (int64_t)ns; t++) {
            if (opened < ns && depth < max_depth && (depth == 0 || may_open[t])) {
                stack[depth++] = opened;
                *out++ = heads[opened++];
            } else {
                *out++ = heads[stack[--depth]] + 1;
            }
        }
        heads += ns;
        may_open += 2 * (int64_t)ns;
    }
}

/* ---- the counter-based numbers of `synthetic.rng` -----------------------------------------
 * Number j of a stage row with key k is mix(k + j * G) (SplitMix64's finaliser), as a float64
 * in [0, 1) from its top 53 bits, or an integer in [0, n) as ((top 32 bits) * n) >> 32: the
 * same integer operations as the NumPy code, so the same values, at ~1 ns a number instead
 * of ~15 (a dozen NumPy passes over uint64 arrays). */
#define GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t mix64(uint64_t x) {
    uint64_t z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Row r: numbers offset + 1 .. offset + counts[r], flat. n == 0: float64 uniforms into
 * out; else int64 integers in [0, n). */
void rng_rows(int64_t rows, const uint64_t *keys, const int64_t *counts, uint64_t offset,
              uint64_t n, void *out) {
    double *fo = out;
    int64_t *io = out;
    for (int64_t r = 0; r < rows; r++) {
        uint64_t x = keys[r] + (offset + 1) * GOLDEN;
        int64_t c = counts[r];
        if (n == 0)
            for (int64_t j = 0; j < c; j++, x += GOLDEN) *fo++ = (double)(mix64(x) >> 11) * 0x1.0p-53;
        else
            for (int64_t j = 0; j < c; j++, x += GOLDEN) *io++ = (int64_t)(((mix64(x) >> 32) * n) >> 32);
    }
}

/* Element i: number j[i] of the row with key keys[i], as a float64 uniform. */
void rng_at(int64_t m, const uint64_t *keys, const int64_t *j, double *out) {
    for (int64_t i = 0; i < m; i++)
        out[i] = (double)(mix64(keys[i] + (uint64_t)j[i] * GOLDEN) >> 11) * 0x1.0p-53;
}

/* out[i] = mix(keys[i] ^ h): a stage's keys (`Draws.sub`). */
void rng_sub(int64_t n, const uint64_t *keys, uint64_t h, uint64_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = mix64(keys[i] ^ h);
}

/* Row r: counts[r] uniform picks from its pool values[starts[r] : starts[r] + sizes[r]]:
 * values[starts[r] + min(floor(u * sizes[r]), sizes[r] - 1)] with u number j = 1.. of key r,
 * the NumPy expression of `SimpleTask._set_op`'s draws. */
void rng_pick_rows(int64_t rows, const uint64_t *keys, const int64_t *counts,
                   const int32_t *values, const int64_t *starts, const int64_t *sizes,
                   int32_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        uint64_t x = keys[r] + GOLDEN;
        int64_t m = sizes[r];
        const int32_t *pool = values + starts[r];
        for (int64_t j = 0; j < counts[r]; j++, x += GOLDEN) {
            double u = (double)(mix64(x) >> 11) * 0x1.0p-53;
            int64_t i = (int64_t)(u * (double)m);
            *out++ = pool[i < m - 1 ? i : m - 1];
        }
    }
}

/* `ragged.shuffle_rows` in one pass: row r's values ordered by np.argsort(u + r) of its
 * counter numbers u (j = 1..lengths[r] of keys[r]), by bucket_argsort.
 * Returns 1 when two keys u + r tie (then np.argsort decides: the caller's NumPy path), 0
 * when out holds the shuffled values, -1 when out of memory. */
int rng_shuffle_rows(int64_t rows, const uint64_t *keys, const int64_t *lengths,
                     const int32_t *values, int32_t *out) {
    int64_t longest = 0;
    for (int64_t r = 0; r < rows; r++) if (lengths[r] > longest) longest = lengths[r];
    int64_t *cnt = malloc(((size_t)longest * 2 + 1) * sizeof(int64_t));
    double *u = malloc(((size_t)longest + 1) * sizeof(double));
    double *key = malloc(((size_t)longest + 1) * sizeof(double));
    int64_t *bucket = malloc(((size_t)longest + 1) * sizeof(int64_t));
    int64_t *idx = malloc(((size_t)longest + 1) * sizeof(int64_t));
    int rc = (cnt && u && key && bucket && idx) ? 0 : -1;
    double prev = -1.0;  /* the last key u + r of the previous non-empty row */
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        int64_t L = lengths[r];
        if (L == 0) continue;
        uint64_t x = keys[r] + GOLDEN;
        for (int64_t i = 0; i < L; i++, x += GOLDEN) u[i] = (double)(mix64(x) >> 11) * 0x1.0p-53;
        bucket_argsort(u, L, idx, key, cnt, bucket);
        for (int64_t k = 0; k < L; k++) {
            double next = key[k] + (double)r;
            if (!(next > prev)) { rc = 1; break; }
            prev = next;
            out[k] = values[idx[k]];
        }
        values += L;
        out += L;
    }
    free(cnt);
    free(u);
    free(key);
    free(bucket);
    free(idx);
    return rc;
}

/* `ragged.partition_counts` before its + 1: row r throws balls[r] balls into its k[r] parts
 * (part min(floor(u * k), k - 1) for its counter numbers u = 1, 2, ...); counts (zeroed,
 * sum(k) long) gets each part's balls, rows one after another. */
void rng_partition(int64_t rows, const uint64_t *keys, const int64_t *balls, const int64_t *k,
                   int64_t *counts) {
    for (int64_t r = 0; r < rows; r++) {
        uint64_t x = keys[r] + GOLDEN;
        int64_t parts = k[r];
        for (int64_t j = 0; j < balls[r]; j++, x += GOLDEN) {
            double u = (double)(mix64(x) >> 11) * 0x1.0p-53;
            int64_t b = (int64_t)(u * (double)parts);
            counts[b < parts - 1 ? b : parts - 1]++;
        }
        counts += parts;
    }
}

/* `SimpleTask._distinct_rows` by per-row retries: row r draws m[r] pool ids from stage
 * try0 (keys mix(key_r ^ hashes[0])), and again from try1, try2, ... while they hold a
 * repeat. A pool id is lo + j, or ids[j] when ids is given, for j = ((z >> 32) * n) >> 32 of
 * the counter numbers z (`Draws.integers`). Ids are below 2**22. Returns 0, -1 when out of
 * memory, or 1 when a row needs more than `attempts` rounds (the caller's NumPy path). */
int rng_distinct_rows(int64_t rows, const uint64_t *keys, const int64_t *m,
                      const uint64_t *hashes, int64_t attempts, uint64_t n, int32_t lo,
                      const int32_t *ids, int32_t *out) {
    uint64_t *bits = calloc(((size_t)1 << 22) / 64, sizeof(uint64_t));
    if (!bits) return -1;
    int rc = 0;
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        int64_t a = 0;
        for (;; a++) {
            if (a == attempts) { rc = 1; break; }
            uint64_t x = mix64(keys[r] ^ hashes[a]) + GOLDEN;
            int repeat = 0;
            for (int64_t i = 0; i < m[r]; i++, x += GOLDEN) {
                uint64_t j = ((mix64(x) >> 32) * n) >> 32;
                int32_t v = ids ? ids[j] : lo + (int32_t)j;
                out[i] = v;
                repeat |= has_bit(bits, v);
                bits[v >> 6] |= (uint64_t)1 << (v & 63);
            }
            clear_bits(bits, out, m[r]);
            if (!repeat) break;
        }
        out += m[r];
    }
    free(bits);
    return rc;
}

/* The set operations' raw rows: row r is counts1[r] picks with keys1[r], then sep, then
 * counts2[r] picks with keys2[r], each pick as in rng_pick_rows from the row's pool. */
void rng_pick_pair_rows(int64_t rows, const uint64_t *keys1, const int64_t *counts1,
                        const uint64_t *keys2, const int64_t *counts2, const int32_t *values,
                        const int64_t *starts, const int64_t *sizes, int32_t sep, int32_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        rng_pick_rows(1, keys1 + r, counts1 + r, values, starts + r, sizes + r, out);
        out += counts1[r];
        *out++ = sep;
        rng_pick_rows(1, keys2 + r, counts2 + r, values, starts + r, sizes + r, out);
        out += counts2[r];
    }
}
