"""`synthpre prepare-data TASK --out DIR`: fetch a downstream task's public data into the layout
that tasks/downstream.py reads, verify the example counts, and print what was written.

    synthpre prepare-data mtop --out ~/data/downstream
    synthpre train ... --gin.DOWNSTREAM_DATA_DIR="'~/data/downstream'"

Sources:
- mtop, webqsp, retrosynthesis: the authors' release files
  (`finetuning_data/<task>/{train,valid,test}.txt` of their public bucket), copied unchanged.
- code_translation: CodeXGLUE's aligned `{train,valid,test}.java-cs.txt.{java,cs}` files.
- cnndm_10k and squad_v010_allanswers: TFDS builds cnn_dailymail / squad under `DIR/tfds`
  (then pass `--tfds_data_dir=DIR/tfds`); cnndm_10k also writes the 10k-subset indices file
  `DIR/cnndm_10k/train_indices.txt` (from `--indices FILE`, else a seeded sample).
- scan_simple, scan_length: generated; the splits are written as TSV files for inspection.

`--source` replaces the download location with a mirror (a URL prefix or a local directory
holding the same file names). Files are fetched into `DIR/<task>.partial` and moved into place
only after the counts check, so an interrupted or failed run leaves nothing half-written.
Without network the command stops at once with one line naming the URL it needed (TFDS would
otherwise retry for minutes).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from synthpre_jax.data import downstream_formats as fmt
from synthpre_jax import errors, paths
from synthpre_jax.errors import UserError, did_you_mean

RELEASE_BASE = "https://storage.googleapis.com/n2formal-public-data/synthetic_pretraining/finetuning_data"
CODEXGLUE_BASE = "https://raw.githubusercontent.com/microsoft/CodeXGLUE/main/Code-Code/code-to-code-trans/data"
# The first file TFDS fetches for each dataset (named in the no-network message).
TFDS_URLS = {
    "cnn_dailymail": "https://drive.google.com/uc?export=download&id=0BwmD_VLjROrfTHk4NFg2SndKcjQ",
    "squad": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
}
TFDS_NAMES = {"cnndm_10k": "cnn_dailymail:3.4.0", "squad_v010_allanswers": "squad/v1.1:3.0.0"}

# Published example counts. None: no published count for the authors' conversion (only checked
# to be non-empty). USPTO-50K is the standard 40,008/5,001/5,007 split of Liu et al. (2017).
EXPECTED_COUNTS = {
    "code_translation": {"train": 10300, "validation": 500, "test": 1000},  # CodeXGLUE README
    "retrosynthesis": {"train": 40008, "validation": 5001, "test": 5007},
    "mtop": None,
    "webqsp": None,
    "cnndm_10k": {"train": 287113, "validation": 13368, "test": 11490},  # TFDS cnn_dailymail 3.4.0
    "squad_v010_allanswers": {"train": 87599, "validation": 10570},      # SQuAD v1.1
}
RELEASE_TASKS = ("mtop", "webqsp", "retrosynthesis")
SCAN_TASKS = ("scan_simple", "scan_length")
TASKS = RELEASE_TASKS + ("code_translation", "cnndm_10k", "squad_v010_allanswers") + SCAN_TASKS
ALIASES = {"squad": "squad_v010_allanswers", "cnndm": "cnndm_10k", "cnn_dailymail": "cnndm_10k"}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="synthpre prepare-data", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="one of: " + ", ".join(TASKS))
    p.add_argument("--out", required=True, help="data directory (later DOWNSTREAM_DATA_DIR)")
    p.add_argument("--source", default=None, help="mirror: URL prefix or directory with the same file names")
    p.add_argument("--indices", default=None, help="cnndm_10k: file of TFDS train indices (one a line)")
    p.add_argument("--seed", type=int, default=0, help="cnndm_10k: seed of the sampled subset")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    p.add_argument("--skip-count-check", action="store_true", help="keep files whose counts differ from the published ones")
    return p.parse_args(list(argv))


# ----------------------------------------------------------------------------- fetching

def _source_url(source: Optional[str], default_base: str, name: str) -> str:
    base = source or default_base
    if "://" not in base:  # a local directory
        return Path(base, name).resolve().as_uri()
    return base.rstrip("/") + "/" + name


def _probe(url: str, timeout: float) -> None:
    """Fail fast (one line) when the host of `url`, or the proxy in front of it, is unreachable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = target.hostname, target.port or 80
    else:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=min(timeout, 15)).close()
    except OSError as e:
        raise UserError(f"cannot reach {url} ({e.strerror or e}); this step needs network access "
                        "(or use --source with a local copy of the files)") from None


def download(url: str, dest: Path, timeout: float) -> int:
    """Copy `url` to `dest` (via a temporary name); returns the number of bytes."""
    _probe(url, timeout)
    tmp = dest.with_name(dest.name + ".download")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UserError(f"cannot download {url} ({reason}); check the network or the --source mirror") from None
    os.replace(tmp, dest)
    return dest.stat().st_size


def _check_counts(task: str, counts: dict[str, int], skip: bool) -> list[str]:
    """Problems with the counts (empty splits, or differences from the published numbers)."""
    problems = [f"{split} is empty" for split, n in counts.items() if n == 0]
    expected = EXPECTED_COUNTS.get(task) or {}
    for split, n in counts.items():
        if split in expected and n != expected[split]:
            problems.append(f"{split} has {n} examples, the published count is {expected[split]}")
    if problems and not skip:
        raise UserError(f"{task}: " + "; ".join(problems) + " (pass --skip-count-check to accept "
                        "these counts)")
    return problems


def _finish(partial: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


# ----------------------------------------------------------------------------- tasks

def prepare_file_task(task: str, out: Path, source: Optional[str], timeout: float, skip: bool) -> list[str]:
    partial, final = out / f"{task}.partial", out / task
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    report, counts = [], {}
    try:
        if task == "code_translation":
            for split, stem in fmt.CODEXGLUE_SPLIT_STEMS.items():
                for ext in (".java", ".cs"):
                    download(_source_url(source, CODEXGLUE_BASE, stem + ext), partial / (stem + ext), timeout)
                counts[split] = fmt.check_aligned(*fmt.codexglue_paths(partial, split))
                report.append(f"{final / stem}.{{java,cs}}: {counts[split]} aligned examples")
        else:
            for split, name in fmt.TSV_SPLIT_FILES.items():
                download(_source_url(source, f"{RELEASE_BASE}/{task}", name), partial / name, timeout)
                kept, dropped = fmt.count_tsv(partial / name)
                counts[split] = kept
                report.append(f"{final / name}: {kept} examples"
                              + (f" ({dropped} lines without exactly one tab are dropped)" if dropped else ""))
        problems = _check_counts(task, counts, skip)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _finish(partial, final)
    return report + [f"warning: {p}" for p in problems]


def prepare_tfds_task(task: str, out: Path, timeout: float, skip: bool, indices: Optional[str],
                      seed: int) -> list[str]:
    name = TFDS_NAMES[task]
    _probe(TFDS_URLS[name.split("/")[0].split(":")[0]], timeout)
    import tensorflow_datasets as tfds
    data_dir = out / "tfds"
    builder = tfds.builder(name, data_dir=str(data_dir))
    try:
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types (requests, OSError, DownloadError...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"TFDS could not build {name} (needs {TFDS_URLS[name.split('/')[0].split(':')[0]]}): {first}") from None
    counts = {split: int(info.num_examples) for split, info in builder.info.splits.items()}
    problems = _check_counts(task, counts, skip)
    report = [f"{data_dir}/{name.replace(':', '/')}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    if task == "cnndm_10k":
        idx = fmt.subset_indices(counts["train"], seed=seed, indices_file=indices)
        target = out / "cnndm_10k" / "train_indices.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        how = f"from {indices}" if indices else f"seeded sample, seed {seed}"
        fmt.write_indices_file(target, idx, comment=f"cnndm_10k training subset: indices into TFDS "
                                                    f"{name} train ({how})")
        report.append(f"{target}: {len(idx)} training indices ({how})")
    report.append(f"pass --tfds_data_dir={data_dir} to 'synthpre train'")
    return report + [f"warning: {p}" for p in problems]


def prepare_scan(task: str, out: Path) -> list[str]:
    from synthpre_jax.data import scan
    parts = scan.with_validation(scan.split(task.split("_", 1)[1]))
    final, partial = out / task, out / f"{task}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    report = []
    for split, name in fmt.TSV_SPLIT_FILES.items():
        with open(partial / name, "w", encoding="utf-8") as f:
            f.writelines(f"{c}\t{a}\n" for c, a in parts[split])
        report.append(f"{final / name}: {len(parts[split])} examples")
    _finish(partial, final)
    return report + [f"(the {task} task generates these in memory; the files are for inspection)"]


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    task = ALIASES.get(args.task, args.task)
    if task not in TASKS:
        raise UserError(f"unknown task {args.task!r}{did_you_mean(args.task, TASKS)}; "
                        f"choose one of {', '.join(TASKS)}")
    if args.indices and task != "cnndm_10k":
        raise UserError("--indices applies to cnndm_10k only")
    if args.indices:
        fmt.read_indices_file(args.indices)  # a bad file fails now, not after the download
    if args.source and task in TFDS_NAMES:
        raise UserError(f"--source does not apply to {task}: TFDS downloads it (for a local copy, "
                        "see TFDS's manual download directory)")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    out = Path(os.path.expanduser(args.out))
    paths.check_dir_target(str(out), "--out")
    created = not out.exists()
    before = paths.nearest_existing(str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out} ({e.strerror}); choose a writable directory") from None
    try:
        if task in SCAN_TASKS:
            report = prepare_scan(task, out)
        elif task in TFDS_NAMES:
            report = prepare_tfds_task(task, out, args.timeout, args.skip_count_check, args.indices,
                                       args.seed)
        else:
            report = prepare_file_task(task, out, args.source, args.timeout, args.skip_count_check)
    except BaseException:
        if created and not any(files for _, _, files in os.walk(out)):
            paths.remove_created(str(out), before)  # ours and empty: leave no trace of the attempt
        raise
    for line in report:
        print(line)
    hint = "" if task in SCAN_TASKS else f" (use --gin.DOWNSTREAM_DATA_DIR=\"'{out}'\")"
    print(f"done: {task} in {out}{hint}")
    return 0


if __name__ == "__main__":
    from synthpre_jax.cli import run_guarded
    sys.exit(run_guarded(main, sys.argv[1:]))
