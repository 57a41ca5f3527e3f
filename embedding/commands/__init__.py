"""The bodies of the ``python -m embedding`` commands, called by ``embedding.cli.main``.

Each ``cmd_<name>`` takes the parsed ``argparse.Namespace`` of its subcommand, prints what it did
on stdout and returns the exit code (0); bad input raises an ``EmbeddingError``, which
``embedding.cli.main`` turns into one line on stderr and that error's exit code.
"""
