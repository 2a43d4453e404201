"""Plugin loading: built-ins, then installed entry points (group ``crysbench.plugins``), then user-named
modules or files.

Only what the user names is imported (a file path or a module name); nothing is discovered from the current
directory. The resolved plugin list travels with every run configuration, and the function a worker runs calls
``load_plugins`` first, because a fresh worker process starts with empty registries.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import sysconfig
import traceback
from importlib import metadata
from pathlib import Path
from typing import Iterable

ENTRY_POINT_GROUP = "crysbench.plugins"
_BUILTINS = ("bench.featurizers", "bench.graphs", "bench.encoders", "bench.tasks", "bench.objectives")
_loaded: set[str] = set()


class PluginError(ImportError):
    pass


def load_builtins() -> None:
    for mod in _BUILTINS:
        if mod not in _loaded:
            importlib.import_module(mod)
            _loaded.add(mod)


def load_entry_points() -> list[str]:
    names = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"ep:{ep.value}"
        if key not in _loaded:
            try:
                ep.load()
            except Exception as e:
                raise _failed(f"entry point {ep.name!r} ({ep.value}, group {ENTRY_POINT_GROUP})", e, None) from None
            _loaded.add(key)
        names.append(ep.value)
    return names


# Frames in these trees are crysbench's or Python's own; the user wants the line of their plugin that failed.
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# (with a trailing separator, so that bench/ does not also match benchmarks/)
_INTERNAL_DIRS = tuple(
    os.path.join(str(Path(d).resolve()), "")
    for d in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
# installed, bench.encoders etc. lie inside bench/; editable, they are the repository's peer folders
_OWN_DIRS = tuple(os.path.join(str(_PACKAGE_ROOT / d), "") for d in ("bench", "encoders", "tasks", "objectives"))


def _user_frame(e: BaseException, plugin_file: Path | None) -> traceback.FrameSummary | None:
    """The deepest frame in the plugin file, else in user code (not crysbench, the stdlib or site-packages),
    else not in crysbench; for a SyntaxError, the offending line itself."""
    if isinstance(e, SyntaxError) and e.filename and e.lineno:
        return traceback.FrameSummary(e.filename, e.lineno, "<module>", line=(e.text or "").strip())
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    resolved = [(f, str(Path(f.filename).resolve())) for f in frames]
    preferences = [
        lambda p: plugin_file is not None and p == str(plugin_file),
        lambda p: not p.startswith(_OWN_DIRS) and not p.startswith(_INTERNAL_DIRS),
        lambda p: not p.startswith(_OWN_DIRS),
    ]
    for ok in preferences:
        hits = [f for f, p in resolved if ok(p)]
        if hits:
            return hits[-1]
    return frames[-1] if frames else None


def _failed(what: str, e: BaseException, plugin_file: Path | None) -> PluginError:
    """One line: which plugin, the exception, and the user's own file:line with its source text."""
    if isinstance(e, SyntaxError):
        kind = "a syntax error" if type(e) is SyntaxError else f"a syntax error ({type(e).__name__})"
        text = f"plugin {what} has {kind}: " + " ".join(str(e.msg).split())
    else:
        msg = " ".join(str(e).split())
        text = f"plugin {what} failed to load: {type(e).__name__}" + (f": {msg}" if msg else "")
    frame = _user_frame(e, plugin_file)
    if frame is not None:
        text += f" (at {frame.filename}:{frame.lineno}" + (f": {frame.line.strip()}" if frame.line else "") + ")"
    return PluginError(text)


def resolve(spec: str) -> str:
    """Canonical form of a plugin spec: an absolute path for files, the module name otherwise."""
    if spec.endswith(".py") or "/" in spec or spec.startswith("."):
        p = Path(spec).expanduser().resolve()
        if not p.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist (resolved to {p})")
        return str(p)
    return spec


def load_plugin(spec: str) -> str:
    spec = resolve(spec)
    if spec in _loaded:
        return spec
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        modname = "crysbench_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
        s = importlib.util.spec_from_file_location(modname, path)
        if s is None or s.loader is None:
            raise PluginError(f"cannot load plugin file {path}")
        module = importlib.util.module_from_spec(s)
        sys.modules[modname] = module
        try:
            s.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(modname, None)
            raise _failed(str(path), e, path) from None
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as e:
            if e.name is not None and (spec == e.name or spec.startswith(e.name + ".")):
                raise PluginError(f"plugin module {spec!r} not found: {e}") from None
            raise _failed(f"module {spec!r}", e, None) from None  # the plugin imports something missing
        except Exception as e:
            raise _failed(f"module {spec!r}", e, None) from None
    _loaded.add(spec)
    return spec


def _check_syntax(spec: str) -> None:
    """Compile a plugin file without running it, so a syntax error is reported before torch is imported."""
    path = resolve(spec)
    if path in _loaded or not (path.endswith(".py") or "/" in path):
        return
    try:
        compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise _failed(path, e, Path(path)) from None
    except (OSError, ValueError) as e:  # unreadable, or null bytes
        raise PluginError(f"plugin {path}: cannot read it as Python source ({type(e).__name__}: {e})") from None


def load_plugins(specs: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Load built-ins, entry points, then ``specs``; idempotent. Returns the resolved user plugin list."""
    for s in specs:
        _check_syntax(s)
    load_builtins()
    load_entry_points()
    return [load_plugin(s) for s in specs]


# ---- built-in names without the heavy imports ----------------------------------------------------------------
# Encoders, featurizers and objectives import torch and DGL (seconds). So that a mistyped name is answered at
# once, the names the built-in modules registered are kept in the cache, keyed by the size and mtime of
# crysbench's own source files; a stale or missing list is never used (the full check then runs as before, and
# the command line rewrites the list).

_EARLY_KINDS = {"encoder": "ENCODERS", "featurizer": "FEATURIZERS", "objective": "OBJECTIVES",
                "graph spec": "GRAPH_SPECS"}


def _names_file() -> Path:
    from bench.paths import cache_dir

    return cache_dir() / "builtin-names.json"


def _source_fingerprint() -> str:
    h = hashlib.sha1()
    for d in _OWN_DIRS:
        for root, dirs, files in os.walk(d):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    st = os.stat(os.path.join(root, f))
                    h.update(f"{root}/{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def save_builtin_names() -> None:
    """Record the names crysbench's own modules registered (not tests' or plugins') for ``check_early``; the
    command line calls it after loading the plugins."""
    from bench import registry

    names = {kind: sorted(e.name for e in getattr(registry, attr).entries() if _is_own(e.source))
             for kind, attr in _EARLY_KINDS.items()}
    doc = {"fingerprint": _source_fingerprint(), "names": names}
    path = _names_file()
    try:
        if path.is_file() and json.loads(path.read_text()) == doc:
            return
        from bench.paths import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, sort_keys=True))
    except (OSError, ValueError):
        pass  # a read-only or broken cache costs only speed


def _is_own(source: str) -> bool:
    """Whether a registry entry's source ("file:line", or a module name for objects without source) is
    crysbench's own."""
    if source.split(".")[0] == "bench":
        return True
    return str(Path(source.rsplit(":", 1)[0]).resolve()).startswith(_OWN_DIRS)


def _saved_builtin_names() -> dict[str, list[str]] | None:
    try:
        doc = json.loads(_names_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("fingerprint") != _source_fingerprint():
        return None
    names = doc.get("names")
    return names if isinstance(names, dict) else None


def check_early(names: Iterable[tuple[str, str]], specs: list[str] | tuple[str, ...] = (),
                data_dir: str | None = None) -> None:
    """Refuse an unknown (kind, name) with the registry's own did-you-mean message, before torch and DGL are
    imported. Does nothing when a plugin or an installed entry point could register more names, or when the
    saved built-in names are stale: the registries decide after loading, as always."""
    names = list(names)
    if not names or specs or any(True for _ in metadata.entry_points(group=ENTRY_POINT_GROUP)):
        return
    from bench import registry

    saved = None
    for kind, name in names:
        if kind == "task":  # tasks are cheap to load (no torch) and include the user's custom tasks
            from bench.tasks import get_task

            get_task(name, data_dir)
            continue
        saved = saved if saved is not None else _saved_builtin_names()
        if saved is None:
            return
        known = saved.get(kind)
        if known is None or name in known:
            continue
        reg = getattr(registry, _EARLY_KINDS[kind])
        raise registry.RegistryError(registry.suggest(name, known, kind) + (f" {reg.hint}" if reg.hint else ""))
