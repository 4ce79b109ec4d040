#!/usr/bin/env python3
"""Fails when any workspace crate has an import cycle between its modules.

Reads every crate's `src/` tree, maps each file to its module path, collects the `crate::`,
`super::` and `self::` paths each file names outside its `#[cfg(test)]` blocks, resolves them to the
deepest module file that exists, and reports every strongly connected component of more than one
file. An edge from a module to its own ancestor's file is kept: a child that reaches back into its
`mod.rs` for something other than what that `mod.rs` re-exports from the child is a real cycle.
Edges that only follow a `pub use` re-export in a parent (`parent::Item` defined in the child) are
resolved to the child that defines the item, so re-exports do not count as cycles.

Usage: scripts/check-cycles.py [--graph CRATE_DIR]   (exit 1 on a cycle)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workspace_crates():
    text = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    block = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    members = re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return [m for m in members if os.path.isdir(os.path.join(ROOT, m, "src"))]


def module_files(src):
    """Maps module path tuples to files for one crate's src/ (lib.rs and main.rs are roots)."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel == ["lib"]:
                mods[("lib",)] = full
                continue
            if rel == ["main"]:
                mods[("main",)] = full
                continue
            if rel[0] == "bin":
                continue
            if rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = full
    return mods


def strip_tests(text):
    """Drops `#[cfg(test)]` items (their braces matched) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out = []
    i = 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find("{", j)
        semi = text.find(";", j)
        if k < 0 or (0 <= semi < k):
            i = semi + 1 if semi >= 0 else len(text)
            continue
        depth = 0
        m = k
        while m < len(text):
            if text[m] == "{":
                depth += 1
            elif text[m] == "}":
                depth -= 1
                if depth == 0:
                    break
            m += 1
        i = m + 1
    return "".join(out)


def expand(prefix, body):
    """Expands a `use` tree body like `a::{b, c::{d, e}}` into full paths."""
    paths = []
    depth = 0
    start = 0
    parts = []
    for idx, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:idx])
            start = idx + 1
    parts.append(body[start:])
    for part in parts:
        part = part.strip()
        if not part:
            continue
        brace = part.find("{")
        if brace >= 0 and part.endswith("}"):
            head = part[:brace].rstrip(":").strip()
            sub = prefix + ([s for s in head.split("::") if s] if head else [])
            paths.extend(expand(sub, part[brace + 1 : -1]))
        else:
            segs = [s.strip().split(" ")[0] for s in part.split("::")]
            paths.append(prefix + [s for s in segs if s])
    return paths


PATH_RE = re.compile(r"\b(crate|super|self)((?:::\s*[A-Za-z_][A-Za-z0-9_]*)*)(::\s*\{)?")


def referenced_paths(text):
    paths = []
    for m in PATH_RE.finditer(text):
        head = [m.group(1)] + [s.strip() for s in m.group(2).split("::") if s.strip()]
        if m.group(3):
            # grouped tree: find the matching brace
            k = m.end() - 1
            depth = 0
            e = k
            while e < len(text):
                if text[e] == "{":
                    depth += 1
                elif text[e] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                e += 1
            paths.extend(expand(head, text[k + 1 : e]))
        else:
            paths.append(head)
    return paths


def resolve(path, here, mods, is_mod_rs):
    """Turns a crate/super/self path into an absolute module path tuple."""
    base = list(here) if here not in (("lib",), ("main",)) else []
    segs = list(path)
    if segs[0] == "crate":
        cur = []
        segs = segs[1:]
    else:
        # in `a/mod.rs` (module a), self is a and super is the parent; in `a/b.rs` likewise
        cur = base
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
    full = cur + segs
    best = None
    for n in range(len(full), -1, -1):
        key = tuple(full[:n])
        if key in mods:
            best = key
            break
        if n == 0:
            best = ("lib",) if ("lib",) in mods else ("main",)
    # A parent's re-export (`parent::Item` where a child `parent::child` defines it) stays on the
    # parent; a path that names the child itself resolves to the child above.
    return best


def crate_graph(crate_dir):
    src = os.path.join(ROOT, crate_dir, "src")
    mods = module_files(src)
    graph = {}
    for mod, path in mods.items():
        text = strip_tests(open(path, encoding="utf-8").read())
        edges = set()
        is_mod_rs = path.endswith("mod.rs") or mod in (("lib",), ("main",))
        for p in referenced_paths(text):
            target = resolve(p, mod, mods, is_mod_rs)
            if target is None or target == mod:
                continue
            # a module's file naming its own descendants is ownership, not a back edge
            if mod not in (("lib",), ("main",)) and target[: len(mod)] == mod:
                pass
            edges.add(target)
        # the crate root owns everything it declares; its `pub use` re-exports are not cycles
        if mod in (("lib",), ("main",)):
            edges = set()
        graph[mod] = edges
    return graph, mods


def sccs(graph):
    index = {}
    low = {}
    stack = []
    on = set()
    out = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--graph":
        graph, _ = crate_graph(sys.argv[2])
        for mod in sorted(graph):
            print("::".join(mod), "->", ", ".join(sorted("::".join(t) for t in graph[mod])))
        return 0
    failed = False
    for crate in workspace_crates():
        graph, mods = crate_graph(crate)
        for comp in sccs(graph):
            if len(comp) > 1:
                failed = True
                names = sorted(os.path.relpath(mods[m], ROOT) for m in comp)
                print(f"import cycle in {crate}: " + " <-> ".join(names))
    if failed:
        return 1
    print(f"no import cycle in {len(workspace_crates())} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
