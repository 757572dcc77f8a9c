"""Rebuild the offline SentencePiece vocabulary (synthpre_jax/data/assets/offline_spm.model).

The committed model is the reference that the tests and the demo use; this script exists so
anyone can see, and reproduce, how it was made. The training text is CPython's
`pydoc_data.topics` (which differs between Python releases), so a rebuild on another Python
version gives a slightly different model: keep the committed one unless you mean to change the
vocabulary (that changes every token id and invalidates checkpoints trained on it).

    python scripts/build_offline_vocab.py                 # overwrite the package asset
    python scripts/build_offline_vocab.py --output /tmp/spm.model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthpre_jax.data import offline_vocab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=offline_vocab.OFFLINE_SPM_MODEL,
                   help="where to write the .model (a .json with its metadata is written beside it)")
    args = p.parse_args(argv)
    meta = offline_vocab.write_offline_spm(args.output)
    print(f"wrote {args.output} ({meta['pieces']} pieces, python {meta['python_version']}, "
          f"model sha256 {meta['model_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
