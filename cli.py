"""`mmdiffusion <command>`: the command-line entry point (also `python -m mmdiffusion <command>`)."""

import sys
from typing import Callable, Dict, Optional, Sequence


def _convert(argv: Sequence[str]) -> int:
    from .convert_weights import main

    return main(argv)


COMMANDS: Dict[str, Callable[[Sequence[str]], int]] = {
    "convert": _convert,
}

USAGE = "usage: mmdiffusion <command> [options]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {summary}"
    for name, summary in [
        ("convert", "official .pt checkpoints -> diffusers folder of safetensors"),
    ]
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
