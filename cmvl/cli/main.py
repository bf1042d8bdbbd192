"""`cmvl` command-line dispatcher: the commands of `cmvl.cli.commands.COMMANDS`."""

from __future__ import annotations

import sys

from cmvl.errors import UserError, one_line


def main(argv: list[str] | None = None) -> None:
    from cmvl.cli.commands import find, group_usage, usage
    from cmvl.log import configure, log

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    configure()  # the command sets its verbosity= once it has read its arguments
    try:
        command, rest = find(args)
        if command is None:
            print(group_usage(args[0]))
            return
        command.load()(rest)
    except UserError as err:
        print(f"cmvl: error: {one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        log.warning("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
