"""The ``darts`` command line. Its entry point, :func:`darts_core.cli.main.main`, imports no torch:
the local commands (``search``, ``train``) import it inside the command.
"""
