"""`synthpre gen TASK --num N --seed S --split SPLIT --format {ids,text,release}`.

Prints examples start..start+N-1 of (TASK, SPLIT, SEED), the same examples the
seqio tasks train on (before EOS is appended). Formats:
  ids      one JSON object per line: {"index", "inputs", "targets"}
  text     the examples decoded with the vocabulary
  release  the authors' file format: `[input ids]\\t[target ids]` per line, no EOS
           (`nonsense_summary`: `document\\tsummary` text; `nesting_language`: `[ids]`)
Task settings, as the authors' generator takes them: --length_range LO,HI and
--num_tokens N (a random sub-vocabulary of N symbols; --vocab_seed picks it) for the
simple tasks, --num_tokens for LIME, and --config KEY=VALUE (repeatable; VALUE in JSON,
e.g. order=first_occurrence, balanced=false, max_length=150) for any setting of the
task's constructor; a VALUE that is not JSON is taken as a string). Other settings give other examples, under the same seed and index.
--dedup drops examples whose input an earlier one had (the authors' `deduped_*` files).
With --output the file is written to a temporary name and renamed when complete.
No TensorFlow or JAX is imported.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import IO

import numpy as np

from synthpre_jax import errors
from synthpre_jax.errors import UserError
from synthpre_jax.synthetic.base import generate_range, key_bytes
from synthpre_jax.synthetic.codec import (SPM_ENV_VAR, SentencePieceCodec, load_sentencepiece,
                                          resolve_codec)
from synthpre_jax.synthetic.ragged import take_rows
from synthpre_jax.synthetic.registry import (ALIASES, check_name, check_settings, make_task,
                                             task_names)
from synthpre_jax.synthetic.rng import SPLIT_IDS

CHUNK = 4096


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="synthpre gen", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", nargs="?", help="task id, variant or alias (see --list)")
    p.add_argument("--num", type=int, default=10, help="number of examples (default 10)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--split", default="train", choices=sorted(SPLIT_IDS))
    p.add_argument("--start", type=int, default=0, help="index of the first example")
    p.add_argument("--format", default="ids", choices=["ids", "text", "release"])
    p.add_argument("--spm_path", default=None,
                   help=f"local T5 SentencePiece model (default ${SPM_ENV_VAR}, else the fallback)")
    p.add_argument("--length_range", default=None, metavar="LO,HI",
                   help="raw input lengths of a simple task (default 10,220)")
    p.add_argument("--num_tokens", type=int, default=None,
                   help="a random sub-vocabulary of this many symbols (simple tasks, LIME)")
    p.add_argument("--vocab_seed", type=int, default=None, help="which sub-vocabulary")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="any task setting, VALUE in JSON (repeatable)")
    p.add_argument("--dedup", action="store_true",
                   help="drop examples whose input an earlier one had (the authors' deduped_* "
                        "files); --num still counts the examples generated")
    p.add_argument("--output", default=None, help="write to this file instead of stdout")
    p.add_argument("--list", action="store_true", help="list task names and exit")
    return p


def _settings(args) -> dict:
    """The task constructor's keyword arguments from the command line."""
    out: dict = {}
    if args.length_range is not None:
        try:
            lo, hi = (int(v) for v in args.length_range.split(","))
        except ValueError:
            raise UserError(f"--length_range must be LO,HI (two integers), got "
                            f"{args.length_range!r}") from None
        out["length_range"] = (lo, hi)
    if args.num_tokens is not None:
        out["num_tokens"] = args.num_tokens
    if args.vocab_seed is not None:
        out["vocab_seed"] = args.vocab_seed
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--config takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: the string itself
            out[key] = value
    return out


def _build(name: str, codec, settings: dict):
    try:
        return make_task(name, codec=codec, **settings)
    except TypeError as e:  # the names were checked (check_settings): a value of a wrong type
        raise UserError(f"task {name}: a setting has a value of the wrong type ({e}); "
                        "check the --config values") from None
    except ValueError as e:
        raise UserError(f"task {name}: {e}") from None


def _lines(task, block, indices, fmt: str, codec):
    feats = task.features
    rows = {f: block[f].tolists() for f in feats}
    for j, i in enumerate(indices):
        if fmt == "ids":
            yield json.dumps({"index": i, **{f: rows[f][j] for f in feats}})
        elif fmt == "text":
            yield f"### {task.key} example {i}"
            for f in feats:
                yield f"{f}: {codec.decode(rows[f][j])}"
        elif task.task_id == "nonsense_summary":
            yield "\t".join(codec.decode(rows[f][j]) for f in feats)
        else:
            yield "\t".join(str(rows[f][j]) for f in feats)


def _first_of_each_input(block, seen: set) -> np.ndarray:
    """Rows whose input (the first feature) no earlier row had: the authors'
    `deduplicate_generated_data` (first line per distinct input; targets not compared).
    `seen` holds 16-byte digests of the inputs so far (about 100 bytes per example)."""
    keys = key_bytes(next(iter(block.values())))
    keep = []
    for j, k in enumerate(keys):
        h = hashlib.blake2b(k, digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            keep.append(j)
    return np.array(keep, dtype=np.int64)


def _write(out: IO[str], task, args, codec, progress: bool) -> None:
    done, kept, t0, last = 0, 0, time.time(), 0.0
    seen: set = set()
    while done < args.num:
        n = min(CHUNK, args.num - done)
        start = args.start + done
        block = generate_range(task, args.seed, args.split, start, start + n)
        indices = np.arange(start, start + n)
        if args.dedup:
            rows = _first_of_each_input(block, seen)
            block = {f: take_rows(r, rows) for f, r in block.items()}
            indices = indices[rows]
        for line in _lines(task, block, indices.tolist(), args.format, codec):
            out.write(line + "\n")
        done += n
        kept += len(indices)
        if progress and time.time() - last > 1.0:
            last = time.time()
            rate = done / max(last - t0, 1e-9)
            print(f"\r{done}/{args.num} examples ({rate:,.0f}/s)", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    if args.dedup and sys.stderr.isatty():
        print(f"{kept} of {done} examples kept (--dedup)", file=sys.stderr)


def _explicit_codec(path: str) -> SentencePieceCodec:
    """A model the user named with --spm_path must load: falling back to another vocabulary
    (as for the default path) would silently give ids they did not ask for."""
    if "://" in path:
        raise UserError(f"--spm_path {path}: 'synthpre gen' reads local files only; copy the model "
                        "to this machine and pass its path")
    try:
        return load_sentencepiece(path)
    except OSError as e:
        raise UserError(f"--spm_path {path}: {e.strerror or e}; give a local SentencePiece "
                        ".model file") from None
    except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError and others
        raise UserError(f"--spm_path {path} is not a SentencePiece model "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        print("\n".join(task_names()))
        print("aliases: " + ", ".join(f"{a}={t}" for a, t in sorted(ALIASES.items())))
        return 0
    if not args.task:
        raise UserError("missing TASK; run 'synthpre gen --list' for the names")
    if args.num < 0 or args.start < 0:
        raise UserError("--num and --start must be >= 0")
    name = check_name(args.task)  # before the vocabulary, so a bad name is the only output
    settings = _settings(args)
    check_settings(name, settings)
    if args.output is not None:  # before the vocabulary, whose warning would come first
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):
            raise UserError(f"cannot write {args.output}: {parent} is not a directory")
    codec = _explicit_codec(args.spm_path) if args.spm_path else resolve_codec()
    task = _build(name, codec, settings)
    if args.output is None:
        _write(sys.stdout, task, args, codec, progress=False)
        return 0
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            _write(f, task, args, codec, progress=sys.stderr.isatty())
        os.replace(tmp, args.output)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return 0
