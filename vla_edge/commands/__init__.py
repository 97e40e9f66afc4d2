"""One module per ``vla-edge`` sub-command. Each defines ``add_parser(subparsers)`` and sets ``func``.

A command's ``func(args) -> int`` returns the exit status. It raises ``VlaEdgeError`` for problems the user
can fix; the CLI prints the message (never a traceback).
"""
