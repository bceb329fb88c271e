"""Regenerate the README's example outputs, so they cannot go stale.

Each ``<!-- output: codecloop ARGS -->`` comment in README.md is followed by a fenced block holding
what ``codecloop ARGS`` prints on stdout (trailing blanks of each line dropped). This script runs every such command (against ``--target``
if given, else each command's own server choice) and rewrites those blocks; ``--check`` only
compares and exits 1 naming the commands whose output differs (tests/test_readme_outputs.py).

    .venv/bin/python scripts/readme_outputs.py            # rewrite README.md
    .venv/bin/python scripts/readme_outputs.py --check    # exit 1 if any block is stale
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- output: codecloop (?P<args>[^>]*?) -->\n```\n)(?P<body>.*?)(```\n)", re.S)


def run(args: str, target: str | None) -> str:
    """stdout of ``codecloop ARGS`` (with ``--target``), failing loudly on a non-zero exit."""
    argv = shlex.split(args)
    if target:
        argv[1:1] = ["--target", target]
    out = subprocess.run([sys.executable, "-m", "codecloop.cli", *argv], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"codecloop {args}: exit code {out.returncode}\n{out.stderr}")
    return "".join(line.rstrip() + "\n" for line in out.stdout.splitlines())  # no trailing blanks in the README


def regenerate(text: str, target: str | None) -> tuple[str, list[str]]:
    """README text with every output block regenerated, and the commands whose block changed."""
    changed: list[str] = []

    def replace(m: re.Match[str]) -> str:
        body = run(m["args"], target)
        if body != m["body"]:
            changed.append(m["args"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(replace, text), changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a block differs")
    p.add_argument("--target", help="the server to run the commands against (default: each command's own choice)")
    args = p.parse_args()
    text = README.read_text()
    if not BLOCK.search(text):
        raise SystemExit("README.md has no '<!-- output: codecloop ... -->' block")
    new, changed = regenerate(text, args.target)
    if args.check:
        for c in changed:
            print(f"stale README output: codecloop {c}", file=sys.stderr)
        return 1 if changed else 0
    README.write_text(new)
    print(f"README.md: {len(changed)} output block(s) rewritten" + "".join(f"\n  codecloop {c}" for c in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
