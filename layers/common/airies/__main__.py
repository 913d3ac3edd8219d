"""``python -m airies <command>``: developer commands of the local stack.

    python -m airies call --agent agt_... --say "when are you open"     # call an agent from the terminal

Commands live under ``airies/local`` (not shipped in the Lambda layer) and are imported only when run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {"call": ("airies.local.call_client", "call an agent from the terminal (python -m airies call --help)")}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: python -m airies <command> [options]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<8}{summary}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    status: int = module.main(args[1:])
    return status


if __name__ == "__main__":
    sys.exit(main())
