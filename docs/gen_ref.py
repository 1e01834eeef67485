"""Generate the API reference at build time (run by mkdocs-gen-files, see mkdocs.yml).

Nothing in the reference is written by hand, so nothing in it can go stale:

* every *public module* of ``torch_curriculum`` (no path component starting with ``_``) that
  declares ``__all__`` gets a page, ``reference/<dotted.path>.md``, rendering the names of its
  ``__all__`` from their docstrings with mkdocstrings; a name is rendered once, on the page of the
  public module that defines it (a name defined in a private module, e.g. ``loragen._generator``,
  lives on the page of the shallowest public module exporting it); other pages link to it;
* ``reference/index.md`` lists the top-level ``torch_curriculum`` namespace (its ``__all__``) and
  every module page; ``reference/cli.md`` is the ``--help`` of ``torch-curriculum`` and of each
  sub-command, read from the parser itself; ``reference/SUMMARY.md`` is the nav (mkdocs-literate-nav);
* a missing docstring is a warning, and ``mkdocs build --strict`` (``make docs``, the docs test)
  turns any warning into a failure. Checked: each public module; each class and function in a
  public module's ``__all__``; each public method and property of those classes (inherited ones from
  private bases included), except the framework hooks in ``FRAMEWORK_HOOKS`` that override
  transformers' documented methods. Module-level constants in ``__all__`` are documented by their
  module's docstring and are not checked.

New modules need no edit here: they appear as soon as they have ``__all__``.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from pathlib import Path

import griffe
import mkdocs_gen_files

PACKAGE = "torch_curriculum"
ROOT = Path(__file__).resolve().parent.parent
#: overrides of transformers.TrainerCallback / Trainer methods, documented upstream
FRAMEWORK_HOOKS = ("on_*", "get_train_dataloader", "set_initial_training_values", "_*")

# a "mkdocs.*" logger: its warnings count in `mkdocs build --strict`
log = logging.getLogger("mkdocs.plugins.torch_curriculum.gen_ref")


def _is_public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def _walk(module: griffe.Module):
    yield module
    for sub in sorted(module.modules.values(), key=lambda m: m.path):
        yield from _walk(sub)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if obj.is_alias else obj


def _summary(obj: griffe.Object) -> str:
    doc = obj.docstring.value.strip() if obj.docstring else ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return first.replace("|", "\\|")


def _page(module_path: str) -> str:
    return f"{module_path}.md"


_reported: set[str] = set()


def _check_docstrings(obj: griffe.Object) -> int:
    """Warn for ``obj`` and its public methods/properties without a docstring; return the count."""
    missing = 0
    if not obj.docstring or not obj.docstring.value.strip():
        log.warning("%s: public %s has no docstring (%s:%s)", obj.path, obj.kind.value,
                    obj.relative_filepath, obj.lineno)
        missing += 1
    if obj.kind is griffe.Kind.CLASS:
        for name, member in sorted(obj.all_members.items()):
            if any(fnmatch.fnmatchcase(name, pat) for pat in FRAMEWORK_HOOKS):
                continue
            try:
                m = _target(member)
            except griffe.AliasResolutionError:
                continue
            if not m.path.startswith(PACKAGE + "."):
                continue
            is_method = m.kind is griffe.Kind.FUNCTION
            is_property = m.kind is griffe.Kind.ATTRIBUTE and "property" in m.labels
            if m.path in _reported:
                continue
            if (is_method or is_property) and (not m.docstring or not m.docstring.value.strip()):
                _reported.add(m.path)
                log.warning("%s.%s: public %s has no docstring (%s:%s)", obj.path, name,
                            "property" if is_property else "method", m.relative_filepath, m.lineno)
                missing += 1
    return missing


def _cli_page() -> str:
    """``torch-curriculum --help`` and each sub-command's help, from the parser."""
    sys.path.insert(0, str(ROOT))
    try:
        from torch_curriculum.cli import build_parser
    finally:
        sys.path.pop(0)
    import argparse
    import os

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix it for a stable page
    parser = build_parser()
    out = ["# Command line", "",
           "The `torch-curriculum` command (installed with the package; also `python -m torch_curriculum`).",
           "This page is the parser's own `--help`, generated when the site is built.", "",
           "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [f"## `torch-curriculum {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def main() -> None:
    extensions = griffe.load_extensions(f"{ROOT / 'docs' / 'griffe_ext.py'}:MarkdownDocstrings")
    pkg = griffe.load(PACKAGE, search_paths=[str(ROOT)], docstring_parser="google", extensions=extensions,
                      resolve_aliases=True, resolve_implicit=False, resolve_external=False)
    modules = [m for m in _walk(pkg) if m.path != PACKAGE and _is_public(m.path) and m.exports is not None]
    modules.sort(key=lambda m: (m.path.count("."), m.path))

    # home page of every exported object: its defining module if public, else the shallowest public exporter
    home: dict[str, str] = {}
    exported: dict[str, list[tuple[str, griffe.Object]]] = {}
    for m in modules:
        for name in map(str, m.exports):
            try:
                obj = _target(m[name])
            except (KeyError, griffe.AliasResolutionError):
                log.warning("%s.__all__ names %r, which the module does not define", m.path, name)
                continue
            exported.setdefault(m.path, []).append((name, obj))
            defining = obj.module.path if obj.kind is not griffe.Kind.MODULE else obj.path
            if defining in {x.path for x in modules}:
                home.setdefault(obj.path, defining)
    for m in modules:
        for _name, obj in exported.get(m.path, []):
            home.setdefault(obj.path, m.path)

    missing = 0
    nav = mkdocs_gen_files.Nav()
    for m in modules:
        if not m.docstring:
            log.warning("%s: public module has no docstring (%s)", m.path, m.relative_filepath)
            missing += 1
        own = [(n, o) for n, o in exported.get(m.path, []) if home.get(o.path) == m.path]
        others = [(n, o) for n, o in exported.get(m.path, []) if home.get(o.path) != m.path]
        lines = ["::: " + m.path, "    options:", "      show_root_heading: true",
                 "      show_root_toc_entry: false", "      heading_level: 1"]
        lines.append("      members:" + ("" if own else " false"))
        lines += [f"        - {n}" for n, _ in own]
        if others:
            lines += ["", "## Re-exported here", "", "| name | documented at |", "| --- | --- |"]
            lines += [f"| `{n}` | [`{o.path}`][{o.path}] |" for n, o in others]
        for _n, o in own:
            if o.kind in (griffe.Kind.CLASS, griffe.Kind.FUNCTION):
                missing += _check_docstrings(o)
        with mkdocs_gen_files.open(f"reference/{_page(m.path)}", "w") as f:
            f.write("\n".join(lines) + "\n")
        mkdocs_gen_files.set_edit_path(f"reference/{_page(m.path)}", Path("..") / m.relative_filepath)
        nav[(m.path,)] = _page(m.path)

    # the top-level namespace: a table of `torch_curriculum.__all__`, linked to where each is documented
    rows = []
    for name in map(str, pkg.exports or []):
        if name == "__version__":
            continue
        try:
            obj = _target(pkg[name])
        except (KeyError, griffe.AliasResolutionError):
            log.warning("torch_curriculum.__all__ names %r, which the package does not define", name)
            continue
        if obj.path not in home:
            log.warning("torch_curriculum.%s (%s) is in no public module's __all__, so it has no reference "
                        "entry; add it to the __all__ of the module that defines it", name, obj.path)
            continue
        rows.append(f"| [`{name}`][{obj.path}] | {_summary(obj)} |")
    mods = [f"| [`{m.path}`]({_page(m.path)}) | {_summary(m)} |" for m in modules]
    index = ["# API reference", "",
             "Generated from the docstrings when the site is built (`docs/gen_ref.py`): one page per public",
             "module, listing the names in its `__all__`. Everything below is importable as written.", "",
             "## `import torch_curriculum`", "",
             f"{_summary(pkg)} The names of `torch_curriculum.__all__`:", "",
             "| name | what |", "| --- | --- |", *rows, "",
             "## Modules", "", "| module | what |", "| --- | --- |", *mods,
             "| [`torch-curriculum`](cli.md) | The command line. |", ""]
    with mkdocs_gen_files.open("reference/index.md", "w") as f:
        f.write("\n".join(index))
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write(_cli_page())
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.write("* [Overview](index.md)\n* [Command line](cli.md)\n")
        f.writelines(nav.build_literate_nav())
    if missing:
        log.warning("%d public name(s) without a docstring (see above)", missing)


main()
