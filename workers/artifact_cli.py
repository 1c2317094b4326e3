"""``agent-runner artifact``: read what runs saved, from the store of
``AGENT_RUNNER_ARTIFACT_URL`` (:mod:`workers.artifacts`).

::

    agent-runner artifact list APP USER [SESSION]             names, one a line
    agent-runner artifact versions APP USER SESSION NAME      versions as JSON lines
    agent-runner artifact get APP USER SESSION NAME [--version N] [-o FILE]
                                                              the bytes (stdout or FILE)

``user:`` names need no session: pass ``-`` for it. Errors (no store configured, a bad name, a
store that is down) print one line and exit with status 1, like every ``agent-runner`` command.
"""

from __future__ import annotations

import argparse
import json
import sys

from .artifacts import artifact_versions, list_artifacts, load_artifact

__all__ = ["add_artifact_commands"]


def _session(value: str | None) -> str | None:
    return None if value in (None, "", "-") else value


def _fail(message: str) -> int:
    """What ``agent-runner`` does with its errors: one line, status 1."""
    print(f"agent-runner: error: {message}", file=sys.stderr)
    return 1


def cmd_list(args: argparse.Namespace) -> int:
    names = list_artifacts(args.app_name, args.user_id, _session(args.session_id))
    for name in names:
        print(name)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    versions = artifact_versions(args.app_name, args.user_id, _session(args.session_id), args.name)
    if not versions:
        return _fail(f"there is no artifact {args.name!r}.")
    for version in versions:
        print(json.dumps(version.to_json()))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    artifact = load_artifact(
        args.app_name, args.user_id, _session(args.session_id), args.name, version=args.version
    )
    if artifact is None:
        which = "" if args.version is None else f" version {args.version}"
        return _fail(f"there is no artifact {args.name!r}{which}.")
    if args.output:
        with open(args.output, "wb") as out:
            out.write(artifact.data)
        print(
            f"wrote {artifact.name!r} version {artifact.version} ({artifact.content_type}, "
            f"{artifact.size} bytes) to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.buffer.write(artifact.data)
        sys.stdout.flush()
    return 0


def _version(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a version (0, 1, 2, ...)")
    return number


def add_artifact_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``artifact list|versions|get`` to the ``agent-runner`` parser."""
    artifact = commands.add_parser(
        "artifact", help="list and read the artifacts runs saved (AGENT_RUNNER_ARTIFACT_URL)"
    )
    actions = artifact.add_subparsers(dest="artifact_command", required=True)

    listing = actions.add_parser("list", help="the artifact names a session sees")
    listing.add_argument("app_name")
    listing.add_argument("user_id")
    listing.add_argument("session_id", nargs="?", default=None, help="omit for user: names only")
    listing.set_defaults(handler=cmd_list)

    for name, handler, what in (
        ("versions", cmd_versions, "every version of an artifact, as JSON lines"),
        ("get", cmd_get, "the bytes of an artifact (the latest version unless --version)"),
    ):
        sub = actions.add_parser(name, help=what)
        sub.add_argument("app_name")
        sub.add_argument("user_id")
        sub.add_argument("session_id", help="'-' for a user: name")
        sub.add_argument("name")
        if name == "get":
            sub.add_argument("--version", type=_version, default=None)
            sub.add_argument("-o", "--output", default=None, help="write to this file")
        sub.set_defaults(handler=handler)
