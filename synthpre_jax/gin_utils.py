"""T5X's command line: --gin_file, --gin.NAME=VALUE, --gin_bindings, --gin_search_paths.

Gin reports mistakes as long tracebacks; here every parse or binding problem becomes one
`UserError` line that names the binding and says what to do (quote strings, check names).
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import gin

from synthpre_jax.errors import UserError, did_you_mean

REPO_GIN_DIR = Path(__file__).resolve().parent.parent / "gin_configs"


class _QuietGinProbe(logging.Filter):
    """gin logs 'Path not found' at ERROR while probing search paths for an include it then
    finds; that is noise, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


logging.getLogger().addFilter(_QuietGinProbe())


def default_search_paths() -> list[str]:
    """Our gin_configs/ first, so 'models/t5_small.gin' and 'runs/pretrain.gin' resolve."""
    return [str(REPO_GIN_DIR)] if REPO_GIN_DIR.is_dir() else []


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` (T5X's shorthand) -> `--gin_bindings=NAME = VALUE`."""
    out = []
    it = iter(argv)
    for a in it:
        if a.startswith("--gin.") and a != "--gin.":
            body = a[len("--gin."):]
            if "=" not in body:
                value = next(it, None)
                if value is None or value.startswith("--"):
                    raise UserError(f"{a} has no value: use --gin.NAME=VALUE") from None
                body = body + "=" + value
            name, value = body.split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(a)
    return out


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later wins)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding NAME = VALUE (repeatable)")
    parser.add_argument("--gin_search_paths", action="append", default=[],
                        help="comma-separated directories to look for gin files and includes")


def _search_paths(raw: Sequence[str]) -> list[str]:
    paths = []
    for item in raw:
        paths += [p for p in item.split(",") if p]
    return paths


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Parse files then bindings; raise UserError with one line on any problem."""
    search = _search_paths(search_paths) + default_search_paths()
    for p in search + ["."]:
        gin.add_config_file_search_path(p)
    files = []
    for f in gin_files:
        found = _resolve(f, search)
        if found is None:
            raise UserError(f"gin file {f!r} not found (searched the working directory and "
                            f"{', '.join(default_search_paths() + _search_paths(search_paths)) or 'no search paths'})")
        if os.path.isdir(found):
            raise UserError(f"gin file {f!r} is a directory ({found}); give a .gin file")
        files.append(found)
    for f in files:
        try:
            gin.parse_config_file(f)
        except UnicodeDecodeError as e:
            bad = _first_non_utf8(f, search)
            where = f if bad in (None, f) else f"{bad} (included by {f})"
            why = f" ({e.reason} at byte {e.start})" if bad in (None, f) and e.reason else ""
            raise UserError(f"gin file {where} is not UTF-8 text{why}; save it as UTF-8") from None
        except Exception as e:  # gin raises many types; all are configuration mistakes here
            raise UserError(_include_problem(f, str(e), [""] + search + ["."])
                            or f"in gin file {f}: {_short(e)}{_gin_suggestion(str(e))}") from None
    for b in gin_bindings:
        try:
            gin.parse_config(b)
        except Exception as e:
            hint = ""
            if re.search(r"= *[A-Za-z_/.][^'\"]*$", b) and "@" not in b and "%" not in b and not re.search(r"= *(True|False|None)\b", b):
                hint = "; string values need quotes, e.g. --gin.NAME=\"'value'\""
            why = re.sub(r"malformed node or string.*?>", "not a value gin can parse", _short(e))
            raise UserError(f"bad gin binding {b!r}: {why}{_gin_suggestion(str(e))}{hint}") from None
    _check_macros_are_used(gin_bindings)


_BINDING_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def referenced_macros() -> Optional[set[str]]:
    """Names of the macros some parsed binding refers to (`%NAME`); None when gin's private
    registry has changed shape (then nothing is checked)."""
    found: set[str] = set()
    config = getattr(gin.config, "_CONFIG", None)
    if not isinstance(config, dict) or not hasattr(gin.config, "ConfigurableReference"):
        return None

    def walk(value: Any) -> None:
        if isinstance(value, gin.config.ConfigurableReference):
            if value.selector == "gin.macro":
                found.add(value.scoped_selector.rsplit("/", 1)[0])
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)

    for params in config.values():
        walk(params)
    return found


def _check_macros_are_used(gin_bindings: Sequence[str]) -> None:
    """gin accepts a macro nothing refers to, so `--gin.DROPOUT_RAT=0.0` would be dropped without
    a word. A command-line macro close to a used one is a misspelling (error); any other unused
    one gets a warning (a wrapper script may pass the same macros to several configs)."""
    set_here = [m.group(1) for b in gin_bindings for line in b.splitlines()
                if (m := _BINDING_NAME.match(line))]
    if not set_here:
        return
    used = referenced_macros()
    if used is None:
        return
    for name in dict.fromkeys(set_here):
        if name in used:
            continue
        hint = did_you_mean(name, used)
        if hint:
            raise UserError(f"gin macro {name} is set but no binding uses it{hint}")
        print(f"warning: gin macro {name} is set but no binding of this config uses it",
              file=sys.stderr)


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.M)


def _first_non_utf8(path: str, search: Sequence[str], seen: Optional[set] = None) -> Optional[str]:
    """The first file among `path` and the files it includes (recursively) that is not UTF-8;
    gin's error names only the top-level file."""
    seen = set() if seen is None else seen
    if path in seen:
        return None
    seen.add(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError:
        return path
    except OSError:
        return None
    for name in _INCLUDE.findall(text):
        found = _resolve(name, [os.path.dirname(path)] + list(search))
        if found and os.path.isfile(found) and (bad := _first_non_utf8(found, search, seen)):
            return bad
    return None


def _include_problem(path: str, message: str, search: Sequence[str]) -> Optional[str]:
    """A clearer line for gin's "Unable to open file: NAME" when NAME is an include that
    names a directory, or a file next to the including one (gin looks for includes only in
    its search paths)."""
    m = re.search(r"Unable to open file: (.+?)\. Searched config paths", message)
    if not m:
        return None
    name = m.group(1)
    for d in search:
        cand = os.path.join(d, name)
        if os.path.isdir(cand):
            return (f"gin file {path} includes {name!r}, which is a directory "
                    f"({os.path.abspath(cand)}); include a .gin file")
    for top in [path] + [os.path.join(d, path) for d in search]:
        beside = os.path.join(os.path.dirname(top), name)
        if os.path.isfile(top) and os.path.isfile(beside):
            return (f"gin file {path} includes {name!r}, which gin looks for only in its "
                    f"search paths, not next to the including file; add "
                    f"--gin_search_paths={os.path.dirname(os.path.abspath(beside))}")
    return None


def _gin_suggestion(text: str) -> str:
    """' (did you mean ...?)' for gin's unknown-configurable and unknown-parameter errors."""
    try:  # gin's registry is private API: when it changes, there is simply no suggestion
        registry = gin.config._REGISTRY
        m = re.search(r"No configurable matching '([^']+)'", text)
        if m:
            parts = m.group(1).count(".") + 1
            return did_you_mean(m.group(1), {".".join(k.split(".")[-parts:]) for k, _ in registry.items()})
        m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
        if m:
            return did_you_mean(m.group(2), inspect.signature(registry.get_match(m.group(1)).wrapped).parameters)
    except Exception:  # noqa: BLE001
        pass
    return ""


def _resolve(path: str, search: Sequence[str]) -> Optional[str]:
    if os.path.exists(path):
        return path
    for d in search:
        cand = os.path.join(d, path)
        if os.path.exists(cand):
            return cand
    return None


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    msg = [m.strip() for m in msg if m.strip()]
    text = msg[0] if msg else type(e).__name__
    for m in msg[1:]:
        if "In bindings string" in m or "No configurable matching" in m or "Unknown" in m:
            text += " " + m
            break
    return text[:400]


def call_configurable(fn, *args, **kwargs):
    """Call a gin configurable, turning gin's missing/unknown-binding errors into UserErrors."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        # gin appends "\n  In call to configurable ..." to errors raised inside configurables;
        # a UserError is one line by contract, so keep only that line.
        lines = str(e).splitlines()
        if len(lines) > 1:
            raise UserError(lines[0]) from None
        raise
    except (TypeError, ValueError) as e:
        text = str(e)
        if "Required bindings" in text or "gin.REQUIRED" in text or "REQUIRED" in text:
            raise UserError(f"a required setting is missing: {_short(e)} "
                            "(set the macro, e.g. --gin.MODEL_DIR=\"'/path'\")") from None
        if "No configurable matching" in text or "isn't a parameter" in text or "not a parameter" in text:
            raise UserError(f"gin configuration error: {_short(e)}") from None
        raise
