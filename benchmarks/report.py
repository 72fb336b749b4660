"""Writes named sections of the docs pages, keeping the other sections."""

from __future__ import annotations

import json
import re
from pathlib import Path


def write_section(path: str, key: str, title: str, body: str) -> None:
    """Replaces (or appends) the block between `<!-- key:start -->` and `<!-- key:end -->`."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    text = file.read_text() if file.exists() else "# keras-kd benchmarks\n"
    block = f"<!-- {key}:start -->\n## {title}\n\n{body.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    file.write_text(text)


def write_results_json(path: str | Path, suite: str, rows: list[dict], claims: list[dict] | None = None) -> None:
    """Replaces `suite`'s rows (and, when given, the claims) of the machine-readable results,
    keeping the other suites' rows; suites in alphabetical order, each in its page's order, so
    regenerating one suite leaves the file's diff to what changed."""
    file = Path(path)
    data = json.loads(file.read_text()) if file.is_file() else {}
    by_suite = {}
    for row in [r for r in data.get("rows", []) if r.get("suite") != suite] + rows:
        by_suite.setdefault(row.get("suite"), []).append(row)
    ordered = [row for name in sorted(by_suite, key=str) for row in by_suite[name]]
    data = {"rows": ordered, "claims": data.get("claims", []) if claims is None else claims}
    file.write_text(json.dumps(data, indent=2) + "\n")
