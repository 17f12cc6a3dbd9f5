"""The ``kudos`` command line: one module per subcommand, on top of every library package.

Only this package imports ``argparse`` and ``rich``; the library below it logs with
:mod:`logging` and returns data, and these modules turn that into tables and progress lines.
:func:`kudos.commands.main.main` is the entry point.
"""
