#!/usr/bin/env bash
# hack/check-links.sh — the repository stands alone: no tracked file points outside it.
#
# Fails (exit 1, printing each offending line as path:line: why: text) when a tracked file
#   - names the reference notes outside the repository (a path into a sibling "shared" directory,
#     an absolute path on the development machine), or cites the design as an outside document
#     ("DESIGN" followed by a section sign, or the upper-case DESIGN file name): the design is
#     docs/design.md;
#   - or, in a Markdown file, has a relative link (inline or reference style, outside code) whose
#     target is not a tracked file or directory, leaves the repository, or names a #fragment that
#     is not a heading (or an explicit id/name anchor) of the target document.
# Links with a scheme (https:, mailto:, ...) are not checked. Run from anywhere inside the clone.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-links: $ROOT is not a git checkout (the check reads the tracked files with git ls-files)" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "check-links: python3 is missing: install it with 'apt-get install -y python3'" >&2
  exit 1
fi

git ls-files -z | python3 -c '
import os, re, sys, unicodedata

tracked = [p for p in sys.stdin.buffer.read().decode("utf-8", "replace").split("\0") if p]
files = set(tracked)
dirs = set()
for p in tracked:
    d = os.path.dirname(p)
    while d:
        dirs.add(d)
        d = os.path.dirname(d)

# Spelled so that this script does not match itself.
OUTSIDE = [
    (re.compile(r"\.\./shared\b"), "points at the shared notes outside the repository"),
    (re.compile(r"(?<![\w.$}/-])/wor" r"k/"), "absolute path of the development machine"),
    (re.compile(r"\bnotes/(?:contract|cluster|ecosystem|packaging)\.md"), "names a reference note outside the repository; the contract is docs/contract.md"),
    (re.compile("DESIGN" + r"\s*\u00a7"), "cites the design as an outside document; cite docs/design.md \u00a7N"),
    (re.compile("DESIGN" + r"\.md"), "names the outside design file; the design is docs/design.md"),
]

problems = []

def report(path, line_no, why, text):
    problems.append(f"{path}:{line_no}: {why}: {text.strip()}")

def read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", "replace")

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:name|id)=\"([^\"]+)\"", re.I)

def slug(text):
    # GitHub: lower-case, drop punctuation (keep letters, digits, spaces, - and _), spaces to -.
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.replace("`", "").lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN":
            out.append("-" if ch == " " else ch)
    return "".join(out)

anchors_cache = {}

def anchors(path):
    if path not in anchors_cache:
        found, seen, fenced = set(), {}, False
        for line in (read(path) or "").splitlines():
            if FENCE.match(line):
                fenced = not fenced
                continue
            if fenced:
                continue
            m = HEADING.match(line)
            if m:
                s = slug(m.group(2))
                n = seen.get(s, 0)
                seen[s] = n + 1
                found.add(s if n == 0 else f"{s}-{n}")
            for a in HTML_ANCHOR.findall(line):
                found.add(a)
        anchors_cache[path] = found
    return anchors_cache[path]

def check_link(path, line_no, target, line):
    if SCHEME.match(target) or target.startswith("//"):
        return
    base, _, fragment = target.partition("#")
    base = base.split("?", 1)[0]
    if base == "":
        dest = path
    else:
        if base.startswith("/"):
            report(path, line_no, f"absolute link {target!r} (use a path relative to the file)", line)
            return
        dest = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if dest == ".." or dest.startswith("../"):
            report(path, line_no, f"link {target!r} leaves the repository", line)
            return
        if dest not in files and dest not in dirs and dest != ".":
            report(path, line_no, f"link {target!r}: {dest} is not a tracked file", line)
            return
    if fragment and dest in files and dest.endswith(".md"):
        if fragment.lower() not in anchors(dest) and fragment not in anchors(dest):
            report(path, line_no, f"link {target!r}: no heading #{fragment} in {dest}", line)

for path in tracked:
    text = read(path)
    if text is None:
        continue
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        for pattern, why in OUTSIDE:
            if pattern.search(line):
                report(path, i, why, line)
    if not path.endswith(".md"):
        continue
    fenced = False
    for i, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = REF_DEF.match(line)
        if m:
            check_link(path, i, m.group(1), line)
            continue
        for target in INLINE_LINK.findall(INLINE_CODE.sub("", line)):
            check_link(path, i, target, line)

for p in problems:
    print(p)
if problems:
    print(f"check-links: {len(problems)} problem(s); the repository must stand alone", file=sys.stderr)
    sys.exit(1)
print(f"check-links: {len(tracked)} tracked files, no reference outside the repository, every relative link resolves")
'
