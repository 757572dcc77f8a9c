"""Examples per second per CPU core: our generators vs the authors' sampling loop, and seqio.

    python benchmarks/synthetic_throughput.py [--tasks identity,union] [--seconds 2]
        [--pipeline_examples 2000] [--no_pipeline]

For every task it measures, on one process with TensorFlow limited to one thread:
  ours      `generate_range` (NumPy and the generators' C kernels, blocks of 1024
            examples, 256 for nonsense_summary) in examples per CPU-second (with the
            generators' glibc malloc tuning, see `synthpre_jax.synthetic.malloc_tuning`,
            in effect for both columns);
  numpy_only  the same without the C kernels (no compiler, or SYNTHPRE_NATIVE_KERNELS=0):
            the same examples, NumPy/Python only;
  authors   a faithful reimplementation, written for this benchmark, of the release's
            per-example loop (`tasks_with_tokens.generate_example` with its samplers,
            `lime_datagen.gen_one_lime_data`, `summarization_tasks_datagen` for
            nonsense_summary): Python `random` (NumPy's global RNG where the release
            used it), `str()` of the id lists as in the release, the SentencePiece
            calls replaced by cached id lists (which favours the authors). Their
            nesting_language generator is not public: its column is a plain
            per-sentence Python stack loop. nonsense_summary's column is text only
            (the release tokenized later), ours includes tokenization;
  pipelines the seqio task (EOS appended) packed to 512/512, counted in task
            examples (segments of packed rows) per CPU-second, in batches of 64 rows
            (at least --pipeline_rows rows and 3 CPU-seconds per pipeline):
            seqio            `seqio.EncDecFeatureConverter(pack=True)` (TF while loop);
            numpy_converter  `data.packing.NumpyPackingEncDecFeatureConverter`, same rows;
            training         `data.dataset.get_dataset(pack=True)`, the trainer's input:
                             for a single synthetic task the same batches built in
                             NumPy without per-row TF work (for nesting_language span
                             corruption included, `synthetic.span_noise`).
            For nesting_language an example is a span-corrupted segment (568 tokens
            of documents -> 512 inputs), not a generator example (a 16-sentence document).
Rates use CPU time (the measuring thread's for the generators, the process's for
the tf.data pipelines, whose work runs in TF threads), so other load on the machine
inflates them less than wall time would; ours and the authors' loop are measured in
alternating rounds and the medians are reported, so that load changes hit both alike.
Writes benchmarks/results/synthetic_throughput.json.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthpre_jax.synthetic import native  # noqa: E402
from synthpre_jax.synthetic.base import generate_range  # noqa: E402
from synthpre_jax.synthetic.codec import FallbackCodec, strip_lone_space  # noqa: E402
from synthpre_jax.synthetic.malloc_tuning import tune_malloc  # noqa: E402
from synthpre_jax.synthetic.registry import BASE_TASK_IDS, make_task  # noqa: E402
from synthpre_jax.synthetic.simple import INTERNAL_NAMES, SIMPLE_TASK_IDS  # noqa: E402

CODEC = FallbackCodec()
TOKENS = tuple(range(2, 32000))
ARG, WORD, TASKDIV, EMPTY = 32097, 32098, 32099, 32096
PREFIX = {t: CODEC.encode(n) for t, n in INTERNAL_NAMES.items()}  # cached SPM.encode(name)
NUMBERS = {n: strip_lone_space(CODEC.encode(str(n))) for n in range(0, 500)}
YES, NO = CODEC.encode("yes"), CODEC.encode("no")


# ---------------------------------------------------------------------------
# The authors' loop (release `tasks_with_tokens.py`), reimplemented
# ---------------------------------------------------------------------------
def _parts_nonzero(n, k):
    return [int(v) for v in np.random.multinomial(n - k, np.ones(k) / k, size=1)[0] + np.ones(k)]


def _parts(n, k):
    return [int(v) for v in np.random.multinomial(n, np.ones(k) / k, size=1)[0]]


def _runs(lo, hi, shuffle, symbols=None, n=None):
    n = random.randint(lo, hi) if n is None else n
    if symbols is None:
        k = random.randint(1, n)
        parts, syms = _parts_nonzero(n, k), random.choices(TOKENS, k=k)
    else:
        k = len(symbols)
        parts, syms = _parts_nonzero(n, k), random.choices(symbols, k=k)
    data = []
    for s, p in zip(syms, parts):
        data += [s] * p
    if shuffle:
        random.shuffle(data)
    return data


def _present(lo, hi):
    max_total = hi - 1
    max_q = int(max_total / (1 + 1 / 0.5))
    q = random.randint(1, max_q)
    n = random.randint(int(q / 0.5), max_total - q)
    query = random.choices(TOKENS, k=q)
    occ = random.randint(1, n // q)
    seq = []
    for i, part in enumerate(_parts(n - occ * q, occ + 1)):
        seq += random.choices(TOKENS, k=part)
        if i < occ:
            seq += query
    return seq, query


def _absent(lo, hi):
    if random.uniform(0, 1) < 0.01:
        ql = random.randint(lo + 1, hi)
        query = random.choices(TOKENS, k=ql)
        return random.choices(TOKENS, k=random.randint(0, ql - 1)), query
    n = random.randint(lo, hi)
    ql = random.randint(lo, n)
    query, seq = random.choices(TOKENS, k=ql), random.choices(TOKENS, k=n)
    while str(query)[1:-1] in str(seq):
        query, seq = random.choices(TOKENS, k=ql), random.choices(TOKENS, k=n)
    return seq, query


def _index(seq, q):
    for i in range(len(seq) - len(q) + 1):
        if seq[i:i + len(q)] == q:
            return i
    return -1


def _sampler(task, lo=10, hi=220):
    if task in ("identity", "reverse", "duplicate", "first_token", "last_token", "length"):
        return random.choices(TOKENS, k=random.randint(lo, hi))
    if task in ("set", "deduplicate"):
        return _runs(lo, hi, shuffle=task == "set")
    if task == "longest_word":
        w = random.randint(1, int(hi / 2))
        ns = random.randint(max(lo - (w - 1), w), hi - (w - 1))
        data = []
        for i, wl in enumerate(_parts_nonzero(ns, w)):
            data += random.choices(TOKENS, k=wl)
            if i < w - 1:
                data.append(WORD)
        return data
    if task == "count":
        n = random.randint(lo - 2, hi - 2)
        q = random.choice(TOKENS)
        c = random.randint(0, n)
        data = [q] * c + random.choices(TOKENS, k=n - c)
        random.shuffle(data)
        return data, [q]
    if task in ("search", "delete"):
        return _present(lo, hi) if random.uniform(0, 1) > (0.5 if task == "search" else 0.25) \
            else _absent(lo, hi)
    if task == "sort":
        k = random.randint(int(lo / 2), int((hi - 1) / 2))
        order = random.choices(TOKENS, k=k)
        n = random.randint(k, hi - 1 - k)
        return _runs(0, 0, True, symbols=order, n=n), order
    if task == "replace":
        seq = random.choices(TOKENS, k=random.randint(lo - 3, hi - 3))
        key = random.sample(list(set(seq)), k=1)
        return seq, [key[0], random.choice(TOKENS)]
    # set operations
    total = random.randint(lo - 1, hi - 1)
    n1 = random.randint(0, total)
    sub = random.sample(TOKENS, k=int(total / 2))
    return random.choices(sub, k=n1), random.choices(sub, k=total - n1)


def _fn(task, x):
    if task == "identity":
        return x
    if task == "reverse":
        return x[::-1]
    if task == "duplicate":
        return [t for t in x for _ in (0, 1)]
    if task == "first_token":
        return x[0]
    if task == "last_token":
        return x[-1]
    if task == "length":
        return NUMBERS[len(x)]
    if task == "set":
        seen, out = set(), []
        for t in x:
            if t not in seen:
                seen.add(t)
                out.append(t)
        return out
    if task == "deduplicate":
        out, last = [], -999999
        for t in x:
            if t != last:
                last = t
                out.append(t)
        return out
    if task == "longest_word":
        best, cur = [], []
        for t in x:
            if t != WORD:
                cur.append(t)
                if len(cur) > len(best):
                    best = cur
            else:
                cur = []
        return best
    seq, q = x
    if task == "count":
        return NUMBERS[sum(1 for t in seq if t == q[0])]
    if task == "search":
        return YES if _index(seq, q) != -1 else NO
    if task == "delete":
        i = _index(seq, q)
        return seq if i == -1 else seq[:i] + seq[i + len(q):]
    if task == "sort":
        rank = {c: i for i, c in enumerate(q)}
        return sorted(seq, key=lambda c: rank[c])
    if task == "replace":
        d = {q[0]: q[1]}
        return [d.get(t, t) for t in seq]
    a, b = set(seq), set(q)
    return list({"union": lambda: a.union(b), "intersect": lambda: a.intersection(b),
                 "set1_minus_set2": lambda: a - b, "set2_minus_set1": lambda: b - a}[task]())


def authors_simple_example(task, lo=10, hi=220):
    """`generate_example` for the 18 simple tasks."""
    binary = task in ("count", "search", "delete", "sort", "replace", "union", "intersect",
                      "set1_minus_set2", "set2_minus_set1")
    while True:
        x = _sampler(task, lo, hi)
        inp = x[0] + [ARG] + x[1] if binary else x
        if lo <= len(inp) <= hi:
            break
    out = _fn(task, x)
    inp = PREFIX[task] + [TASKDIV] + inp
    inp = [int(t) for t in inp]
    out = out if isinstance(out, list) else [out]
    out = [int(t) for t in (out or [EMPTY])]
    return str(inp), str(out)


def authors_lime_example(mode):
    """`gen_one_lime_data` + the LIME branch of `generate_example` (strings, then ids)."""
    vocab = list(TOKENS)
    while True:
        v = random.sample(vocab, k=68)
        upper, lower, math = v[:24], v[24:48], v[48:68]
        nc = random.randint(3, 5)
        pl = random.choice(range(5, 20))
        chars = random.choices(upper[:nc], k=nc * 2)
        variables = list(set(chars))
        pattern = chars + random.choices(math, k=pl)
        random.shuffle(pattern)

        def gen_subst():
            sub, s = {}, []
            for ch in variables:
                x = random.choices(lower + math, k=random.randint(2, 8))
                sub[ch] = x
                s += [ch, ":", "["] + x + ["]", ","]
            return sub, s[:-1]

        sub, sub_str = gen_subst()
        gen_subst()  # the unused second substitution
        result = []
        for t in pattern:
            result += sub[t] if t in sub else [t]
        head = (" ".join(str(c) for c in ["<UPPER>"] + variables) + " "
                + " ".join(str(c) for c in ["<LOWER>"] + lower) + " "
                + " ".join(str(c) for c in ["<MATH>"] + math) + " <space> ")
        body = {"induct": (result + ["<space>"] + sub_str, pattern),
                "deduct": (pattern + ["<space>"] + sub_str, result),
                "abduct": (pattern + ["<space>"] + result, sub_str)}[mode]
        inp = head + " ".join(str(c) for c in body[0]) + "\n"
        out = " ".join(str(c) for c in body[1]) + "\n"
        if len(inp.split(" ")) <= 220 and len(out.split(" ")) <= 220:
            break
    inp = inp.replace("space", "sep").replace(" ,", "")[:-1]
    out = out.replace("space", "sep").replace(" ,", "")[:-1]
    for sym, i in zip([":", "<sep>", "<UPPER>", "[", "<LOWER>", "<MATH>", "]"], range(32000, 32007)):
        inp, out = inp.replace(sym, str(i)), out.replace(sym, str(i))
    return str([int(x) for x in inp.split(" ")]), str([int(x) for x in out.split(" ")])


def authors_nonsense_example(words, transformations):
    """BaseGenerator.get_para + 3 transformations with NumPy's global RNG (text only)."""
    from synthpre_jax.synthetic.nonsense import _Doc  # the same transformation logic,
    # driven by numpy.random as the release's, for the cost of its RNG calls

    class NpStream:
        def random(self):
            return np.random.random()

        def randint(self, a, b):
            return int(np.random.randint(a, b + 1))

        def choices(self, pool, k):
            return list(np.random.choice(pool, (k,), replace=True))

        def sample_distinct(self, pool, k):
            return list(np.random.choice(list(pool), (k,), replace=False))

        def shuffle(self, x):
            np.random.shuffle(x)

    st = NpStream()
    sents = [st.choices(words, 10 + st.randint(-5, 5)) + ["."] for _ in range(10 + st.randint(-3, 3))]
    doc = _Doc(sents, st)
    names = st.sample_distinct(list(transformations), 3)
    try:
        for n in names:
            transformations[n][0](doc)
        summary = []
        for n in names:
            summary += transformations[n][1](doc)
    except Exception:
        return None
    return " ".join(" ".join(s) for s in doc.s), " ".join(summary)


def naive_nesting_example(sentences=16):
    """A per-sentence Python stack loop (the authors' generator is not public)."""
    cum = NAIVE_CUM
    out = []
    for _ in range(sentences):
        n, opened, stack = random.randint(2, 16), 0, []
        while opened < n or stack:
            if stack and (opened == n or len(stack) == 8 or random.random() >= 0.5):
                out.append(stack.pop() + 1)
            else:
                import bisect
                h = 2 + 2 * bisect.bisect_right(cum, random.random() * cum[-1])
                stack.append(h)
                out.append(h)
                opened += 1
    return out


NAIVE_CUM = list(np.cumsum(1.0 / np.arange(1, 16000)))


def authors_fn(task):
    if task in SIMPLE_TASK_IDS:
        return lambda: authors_simple_example(task)
    if task in ("induct", "deduct", "abduct"):
        return lambda: authors_lime_example(task)
    if task == "nonsense_summary":
        from synthpre_jax.synthetic.nonsense import _transformations, nonsense_vocabulary

        words, tr = nonsense_vocabulary(), _transformations()
        return lambda: authors_nonsense_example(words, tr)
    return naive_nesting_example


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------
def cpu_rate(step, seconds: float) -> float:
    """Examples per CPU-second of this thread; `step()` returns how many it produced.

    Thread time, not process time: tf.data threads of other measurements must not count.
    """
    c0, n = time.thread_time(), 0
    while time.thread_time() - c0 < seconds:
        n += step()
    return n / (time.thread_time() - c0)


def ours_step(task_id: str):
    task = make_task(task_id, codec=CODEC)
    state = {"i": 0}
    chunk = 1024 if task_id not in ("nonsense_summary",) else 256

    def step():
        i = state["i"]
        generate_range(task, 0, "train", i, i + chunk)
        state["i"] = i + chunk
        return chunk

    return step


def authors_step(task_id: str):
    fn = authors_fn(task_id)
    random.seed(0)
    np.random.seed(0)

    def step():
        for _ in range(20):
            fn()
        return 20

    return step


@contextlib.contextmanager
def kernels_off():
    """The generators without their C kernels (what a machine without a compiler runs)."""
    saved = native.kernels
    native.kernels = lambda: None
    try:
        yield
    finally:
        native.kernels = saved


def paired_rates(task_id: str, seconds: float, rounds: int,
                 numpy_only: bool) -> tuple[float, float, float, Optional[float]]:
    """Median rates of ours and the authors' loop, the median of paired ratios, and the
    median rate of ours without the C kernels (when asked), in alternating rounds."""
    ours, theirs = ours_step(task_id), authors_step(task_id)
    ours(), theirs()  # warm-up
    plain = ours_step(task_id) if numpy_only else None
    if plain is not None:
        with kernels_off():
            plain()
    a, b, c = [], [], []
    for _ in range(rounds):
        a.append(cpu_rate(ours, seconds / rounds))
        b.append(cpu_rate(theirs, seconds / rounds))
        if plain is not None:
            with kernels_off():
                c.append(cpu_rate(plain, seconds / rounds))
    return (float(np.median(a)), float(np.median(b)), float(np.median(np.divide(a, b))),
            float(np.median(c)) if c else None)


PIPELINES = ("seqio", "numpy_converter", "training")
PIPELINE_MIN_CPU_S = 3.0


def pipeline_rate(task_id: str, rows: int, kind: str) -> float:
    """Task examples per CPU-second through one packing pipeline, 64 rows per batch."""
    import seqio

    import tasks.synthetic  # noqa: F401
    from synthpre_jax.data import dataset as data_lib
    from synthpre_jax.data.packing import NumpyPackingEncDecFeatureConverter

    lengths = {"inputs": 512, "targets": 512}
    if kind == "training":
        cfg = data_lib.DatasetConfig(mixture_or_task_name="synthpre_" + task_id,
                                     task_feature_lengths=lengths, batch_size=64, pack=True)
        ds = data_lib.get_dataset(cfg)
    else:
        task = seqio.get_mixture_or_task("synthpre_" + task_id)
        ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0)
        converter = (seqio.EncDecFeatureConverter if kind == "seqio"
                     else NumpyPackingEncDecFeatureConverter)(pack=True)
        ds = converter(ds, lengths).batch(64)
    it = ds.as_numpy_iterator()
    next(it)
    c0, ex, n = time.process_time(), 0, 0
    # At least `rows` rows and PIPELINE_MIN_CPU_S: a generator block can feed hundreds of
    # rows (nesting_language: ~520), so a short window would count 1 or 2 block costs.
    while n < rows or time.process_time() - c0 < PIPELINE_MIN_CPU_S:
        b = next(it)
        ex += int(b["encoder_segment_ids"].max(axis=1).sum())
        n += 64
    rate = ex / (time.process_time() - c0)
    del it, ds, b  # stop this pipeline's prefetch threads before the next measurement
    gc.collect()
    time.sleep(0.5)
    return rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(BASE_TASK_IDS))
    p.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per generator, per task")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    p.add_argument("--pipeline_rows", type=int, default=1024, help="packed rows per pipeline run (at least; and at least 3 CPU-s)")
    p.add_argument("--no_pipeline", action="store_true")
    p.add_argument("--no_numpy_only", action="store_true",
                   help="skip the column of ours without the C kernels")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synthetic_throughput.json"))
    args = p.parse_args(argv)
    if not args.no_pipeline:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    rows = []
    print(f"{'task':18s} {'ours/s':>10s} {'authors/s':>10s} {'ratio':>7s} {'numpy_only/s':>12s} "
          + " ".join(f"{k + '/s':>17s}" for k in PIPELINES))
    names = args.tasks.split(",")
    gen = {t: paired_rates(t, args.seconds, args.rounds, not args.no_numpy_only)
           for t in names}  # before any tf.data
    for t in names:
        ours, theirs, ratio, plain = gen[t]
        pipes = {k: None for k in PIPELINES}
        if not args.no_pipeline:
            pipes = {k: pipeline_rate(t, args.pipeline_rows, k) for k in PIPELINES}
        rows.append({"task": t, "ours_per_cpu_s": ours, "authors_per_cpu_s": theirs,
                     "ratio": ratio, "numpy_only_per_cpu_s": plain,
                     **{f"{k}_pipeline_per_cpu_s": v for k, v in pipes.items()}})

        def fmt(x, w):
            return f"{x:{w}.0f}" if x is not None else f"{'-':>{w}s}"

        print(f"{t:18s} {ours:10.0f} {theirs:10.0f} {ratio:7.1f} {fmt(plain, 12)} "
              + " ".join(fmt(pipes[k], 17) for k in PIPELINES), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "python": sys.version.split()[0], "numpy": np.__version__,
            "seconds_per_generator": args.seconds, "rounds": args.rounds,
            "pipeline_rows": args.pipeline_rows, "malloc_tuning": tune_malloc(),
            "c_kernels": native.kernels() is not None,
            "note": ("examples per CPU-second: generators on the measuring thread's CPU time "
                     "(medians of alternating rounds), pipelines on the process's CPU time "
                     "with TensorFlow limited to one inter-op and one intra-op thread")}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
