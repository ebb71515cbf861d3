#!/usr/bin/env python3
"""Checks the commands, mechanism lists and paths of README.md and docs/**/*.md against kvq.

Usage: check_doc_commands.py KVQ_BINARY SOURCE_DIR [PYTHON]

- Every `kvq` / `build/kvq` command in a fenced code block (`\\` continuations joined) names a
  subcommand of `kvq --help`, and each of its `--flags` is listed by `kvq [SUB] --help`; the values
  of --task, --mechanism and --mechanisms are names the help lists. Commands with --help, --keys
  or --dry-run run (cwd SOURCE_DIR) and must exit 0.
- With PYTHON (one that imports torch), the flags of `python -m torch.distributed.run` lines are
  checked against that launcher's --help.
- Mechanism lists: the registry's list is the one `kvq train --help` prints for --mechanism. The
  README's table, every comma list of mechanism names in the pages and in scripts/*.sh,
  python/kvq/functional.py's functions and `kvq compare` / `kvq bench --help` must agree with it.
- Every repository path the pages cite (`src/...`, `scripts/...`, links) exists, and every
  link's #anchor is a heading of its page.
Plain Python 3; no torch needed. Exit status 1 with one line per problem.
"""
import ast
import glob
import os
import re
import shlex
import subprocess
import sys

TOP_DIRS = ("src/", "include/", "app/", "tests/", "scripts/", "docs/", "python/", "bench/",
            "fuzz/", ".ci/")
TOP_FILES = ("CMakeLists.txt", "setup.py", "pyproject.toml", "README.md")
CHEAP_FLAGS = ("--help", "--keys", "--dry-run")
COMMAND_STARTS = (";", "&&", "||", "|", "do", "then", "time", "exec", "--no_python", "--no-python")

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def run_help(kvq, args):
    out = subprocess.run([kvq] + args + ["--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"{kvq} {' '.join(args)} --help failed: {out.stderr.strip()}")
    return out.stdout


def help_flags(text):
    flags = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            head = stripped.split("  ")[0]
            flags.update(re.findall(r"--[A-Za-z0-9][A-Za-z0-9_-]*", head))
            flags.update(re.findall(r"(?<![A-Za-z0-9-])-[A-Za-z](?![A-Za-z0-9-])", head))
    return flags


def names_after(text, marker):
    """The comma-separated names after `marker` on its line, e.g. 'Task: a, b, c'."""
    for line in text.splitlines():
        if marker in line:
            tail = line.split(marker, 1)[1]
            return [n.strip() for n in tail.split(",") if n.strip()]
    return []


def fenced_blocks(path):
    """(language, first line number, [lines]) of every fenced code block."""
    blocks, inside, lang, start, lines = [], False, "", 0, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fence = re.match(r"^\s*```(\S*)", line)
            if fence and not inside:
                inside, lang, start, lines = True, fence.group(1), number + 1, []
            elif fence and inside:
                blocks.append((lang, start, lines))
                inside = False
            elif inside:
                lines.append(line.rstrip("\n"))
    return blocks


def joined_commands(start, lines):
    """(line number, text) with backslash continuations joined."""
    out, current, first = [], "", None
    for offset, line in enumerate(lines):
        if first is None:
            first = start + offset
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((first, current + line))
        current, first = "", None
    if current:
        out.append((first, current))
    return out


def is_kvq(token):
    return token == "kvq" or re.fullmatch(r"(\./)?[A-Za-z0-9_.-]*(build[A-Za-z0-9_-]*/)kvq", token)


def check_command(where, tokens, kvq, source, helps, registry, tasks, subcommands, top_flags):
    # kvq where a command starts: first, after a separator, a launcher's --no_python, `do`, or
    # environment assignments.
    i = next((k for k, t in enumerate(tokens) if is_kvq(t) and (
        k == 0 or tokens[k - 1] in COMMAND_STARTS or re.fullmatch(r"[A-Z_]+=\S*", tokens[k - 1]))),
        None)
    if i is None:
        return
    args = []
    for token in tokens[i + 1:]:
        if token in (";", "&&", "||", "|", ">", "2>", "<"):
            break
        args.append(token)
    # Top-level options before the subcommand.
    j = 0
    while j < len(args) and args[j].startswith("-"):
        flag = args[j].split("=", 1)[0]
        if flag not in top_flags:
            problem(where, f"kvq has no top-level option {flag}")
        j += 1 if "=" in args[j] or flag in ("--help", "-h") else 2
    if j >= len(args):
        return
    sub = args[j]
    if sub not in subcommands:
        problem(where, f"kvq has no subcommand '{sub}'")
        return
    if sub not in helps:
        helps[sub] = run_help(kvq, [sub])
    flags = help_flags(helps[sub])
    rest = args[j + 1:]
    for k, token in enumerate(rest):
        if not token.startswith("-") or token == "-":
            continue
        flag = token.split("=", 1)[0]
        if flag not in flags:
            problem(where, f"kvq {sub} has no option {flag}")
            continue
        value = token.split("=", 1)[1] if "=" in token else (rest[k + 1] if k + 1 < len(rest) else "")
        if value.startswith(("$", "<")) or not value:
            continue
        if flag == "--task" and value not in tasks:
            problem(where, f"unknown task '{value}' (kvq {sub} --help lists {', '.join(tasks)})")
        if flag == "--mechanism" and value not in registry:
            problem(where, f"unknown mechanism '{value}'")
        if flag == "--mechanisms":
            for name in value.split(","):
                if name not in registry:
                    problem(where, f"unknown mechanism '{name}' in --mechanisms")
    if any(t.split("=", 1)[0] in CHEAP_FLAGS for t in args) and not any("<" in t for t in args):
        out = subprocess.run([kvq] + args, cwd=source, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [""])[0]
            problem(where, f"`kvq {' '.join(args)}` exited {out.returncode}: {last}")


def check_torchrun(where, tokens, python, launcher_flags):
    if "torch.distributed.run" not in tokens:
        return
    k = tokens.index("torch.distributed.run") + 1
    while k < len(tokens) and not is_kvq(tokens[k]):
        token = tokens[k]
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in launcher_flags and flag.replace("_", "-") not in launcher_flags:
                problem(where, f"{python} -m torch.distributed.run has no option {flag}")
        k += 1


def check_mechanism_list(where, names, registry, python_names=False):
    normal = [n.replace("_", "-") for n in names] if python_names else names
    if len(normal) >= 2 and any(n in registry for n in normal):
        for n in normal:
            if n not in registry:
                problem(where, f"'{n}' in a list of mechanisms is not one: {', '.join(registry)}")


def comma_lists(text):
    """(names, python_names) of comma-separated lists: a,b,c (CLI names) and, inside backticks,
    a, b, c (CLI or Python names: kv_pos is kv-pos)."""
    found = [(m.group(0).split(","), False) for m in re.finditer(
        r"(?<![\w./-])[a-z][a-z0-9_-]*(?:,[a-z][a-z0-9_-]*)+(?![\w./-])", text)]
    for m in re.finditer(r"`([^`\n]*)`", text):
        inner = m.group(1)
        if re.fullmatch(r"[a-z][a-z0-9_-]*(?:, [a-z][a-z0-9_-]*)+", inner):
            found.append((inner.split(", "), True))
    return found


def slug(heading):
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    with open(path, encoding="utf-8") as f:
        return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", f.read(), re.M)}


def expand_braces(path):
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",")
            for p in expand_braces(path[:m.start()] + alt + path[m.end():])]


def patch_created(source, cache={}):
    if source not in cache:
        cache[source] = set()
        for patch in glob.glob(os.path.join(source, "docs", "*.patch")):
            with open(patch, encoding="utf-8") as f:
                cache[source] |= set(re.findall(r"^\+\+\+ b/(\S+)", f.read(), re.M))
    return cache[source]


def check_paths(page, text, source):
    rel = os.path.relpath(page, source)
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(full):
            problem(rel, f"link to a missing file: {target}")
        elif anchor and full.endswith(".md") and anchor not in anchors(full):
            problem(rel, f"link to a missing heading: {target}")
    for m in re.finditer(r"(?<![\w./-])((?:\.ci/|src/|include/|app/|tests/|scripts/|docs/|python/|"
                         r"bench/|fuzz/)[\w./{},+-]*|CMakeLists\.txt|setup\.py|pyproject\.toml)",
                         text):
        cited = m.group(1).rstrip(".,:;)")
        if any(c in cited for c in "<*$") or text[m.end():m.end() + 1] in "<*":
            continue
        for path in expand_braces(cited):
            if re.search(r"(?<![A-Za-z])[A-Z]{3,}(?![A-Za-z])", path) or path in patch_created(source):
                continue  # a placeholder (NAME), or a file a docs/*.patch adds
            if not os.path.exists(os.path.join(source, path)):
                problem(rel, f"cites a path that does not exist: {path}")


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    kvq, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    python = sys.argv[3] if len(sys.argv) == 4 else None
    top = run_help(kvq, [])
    subcommands = names_between(top)
    top_flags = help_flags(top.split("Subcommands:")[0])
    helps = {"train": run_help(kvq, ["train"]), "compare": run_help(kvq, ["compare"]),
             "bench": run_help(kvq, ["bench"])}
    registry = [n.strip() for n in
                helps["train"].split("--mechanism", 1)[1].split("\n")[0].split(":", 1)[1].split(",")]
    tasks = names_after(helps["train"], "Task:")
    if not registry or not tasks:
        raise SystemExit("cannot read the mechanism or task names from kvq train --help")

    launcher_flags = None
    if python:
        out = subprocess.run([python, "-m", "torch.distributed.run", "--help"],
                             capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            launcher_flags = set(re.findall(r"--[A-Za-z0-9][A-Za-z0-9_-]*", out.stdout))

    pages = [os.path.join(source, "README.md")] + sorted(
        glob.glob(os.path.join(source, "docs", "**", "*.md"), recursive=True))
    commands = ran = 0
    for page in pages:
        rel = os.path.relpath(page, source)
        with open(page, encoding="utf-8") as f:
            text = f.read()
        check_paths(page, text, source)
        for number, line in enumerate(text.splitlines(), 1):
            for names, python_names in comma_lists(line):
                check_mechanism_list(f"{rel}:{number}", names, registry, python_names)
        if rel == "README.md":
            table = re.findall(r"^\| `([a-z-]+)` \| (?:qkv|kv)", text, re.M)
            if table != registry:
                problem(rel, f"the mechanism table lists {table}, the registry {registry}")
        for lang, start, lines in fenced_blocks(page):
            if lang not in ("", "sh", "bash", "console"):
                continue
            for number, command in joined_commands(start, lines):
                try:
                    tokens = shlex.split(command, comments=True)
                except ValueError as e:
                    problem(f"{rel}:{number}", f"cannot parse the command: {e}")
                    continue
                # Split on shell separators that shlex leaves attached (`done;`, `a;`).
                tokens = [t for token in tokens for t in re.split(r"(;)$", token) if t]
                if any(is_kvq(t) for t in tokens):
                    commands += 1
                    before = len(problems)
                    check_command(f"{rel}:{number}", tokens, kvq, source, helps, registry, tasks,
                                  subcommands, top_flags)
                    ran += any(t.split("=", 1)[0] in CHEAP_FLAGS for t in tokens) and \
                        len(problems) == before
                if launcher_flags is not None:
                    check_torchrun(f"{rel}:{number}", tokens, python, launcher_flags)

    for script in sorted(glob.glob(os.path.join(source, "scripts", "*.sh"))):
        rel = os.path.relpath(script, source)
        with open(script, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                for names, python_names in comma_lists(line):
                    check_mechanism_list(f"{rel}:{number}", names, registry, python_names)

    functional = os.path.join(source, "python", "kvq", "functional.py")
    tree = ast.parse(open(functional, encoding="utf-8").read())
    exported = next(ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and any(
                        getattr(t, "id", None) == "__all__" for t in node.targets))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    wanted = [n.replace("-", "_") for n in registry]
    in_order = [n for n in exported if n in wanted]
    if in_order != wanted or not set(wanted) <= defined:
        problem("python/kvq/functional.py",
                f"its mechanism functions {in_order} are not the registry's {wanted}")

    anyof = names_after(helps["compare"], "any of")
    if anyof != registry:
        problem("kvq compare --help", f"--mechanisms lists {anyof}, the registry {registry}")
    for m in re.finditer(r"[a-z][a-z-]*(?:,[a-z][a-z-]*)+", helps["compare"].split("--seeds")[0]):
        check_mechanism_list("kvq compare --help", m.group(0).split(","), registry)
    bench_default = re.search(r"all registered: ([a-z,-]+)", helps["bench"])
    if not bench_default or bench_default.group(1).split(",") != registry:
        problem("kvq bench --help", "its default --mechanisms is not the registry's list")

    for p in problems:
        print(p)
    print(f"{len(pages)} pages, {commands} kvq commands checked, {ran} run; "
          f"registry: {', '.join(registry)}; {len(problems)} problem(s)")
    return 1 if problems else 0


def names_between(top_help):
    return [line.split()[0] for line in top_help.split("Subcommands:", 1)[1].splitlines()
            if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
