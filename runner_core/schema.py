"""Write the JSON Schema of events: ``python -m runner_core.schema [PATH]`` (default: stdout)."""

from __future__ import annotations

import sys

from .events import render_event_json_schema


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_event_json_schema()
    if args:
        with open(args[0], "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
