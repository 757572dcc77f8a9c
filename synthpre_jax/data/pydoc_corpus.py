"""The pydoc corpus: English documentation that ships with every CPython, as documents.

Pure Python (no TensorFlow), so the corpus can be read and checked anywhere. CPython's
`pydoc_data.topics` is the text behind `help('topic')`: 79 topics, about 65k words, and about
52k once paragraphs repeated across topics are kept once. That is SMALL (four orders of
magnitude below Wikipedia): a model pre-trained on it is a small-corpus natural reference.
Optionally the docstrings of the standard library are added (parsed with `ast`, never imported,
so nothing runs; about 230k more words, read in a few seconds). The text differs between Python
releases, so corpora and splits are reproducible for one Python version.

Documents are paragraphs (blank-line separated blocks, whitespace collapsed, reStructuredText
heading underlines dropped), not whole topics: topics range from 28 to 8,571 words, and a
topic-level 95/5 split leaves 2 of 79 topics (331 words) for validation.
"""
from __future__ import annotations

import ast
import functools
import re
import sysconfig
from pathlib import Path
from typing import Iterable

# reStructuredText heading underlines (pydoc topics keep them): noise, not language.
_UNDERLINE = re.compile(r"^\s*([*=\-~^\"'`#+.])\1{2,}\s*$")
# Standard-library parts that are tests, GUIs or vendored code rather than documented APIs.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                "tkinter", "turtledemo", "ensurepip", "__pycache__"}


def _paragraphs(text: str) -> Iterable[str]:
    """Blank-line separated blocks of `text`, whitespace collapsed, heading underlines dropped."""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if not _UNDERLINE.match(ln)]
        para = " ".join(" ".join(lines).split())
        if para:
            yield para


def _stdlib_docstrings() -> list[str]:
    """Docstrings of the standard library's modules, classes and functions (sorted files)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        if _STDLIB_SKIP.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few files are deliberately not valid Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append(doc)
    return out


@functools.lru_cache(maxsize=2)
def pydoc_documents(include_docstrings: bool = False) -> tuple[str, ...]:
    """All pydoc documents (both splits) in a fixed order: topics sorted by name, then paragraphs.

    With `include_docstrings`, the standard library's docstrings follow (files sorted by path).
    Duplicate paragraphs are kept once (first occurrence) so no text is in both splits.
    """
    from pydoc_data.topics import topics
    texts = [topics[k] for k in sorted(topics)]
    if include_docstrings:
        texts += _stdlib_docstrings()
    seen, docs = set(), []
    for text in texts:
        for para in _paragraphs(text):
            if para not in seen:
                seen.add(para)
                docs.append(para)
    return tuple(docs)
