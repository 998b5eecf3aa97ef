"""Talking to a darts-service server: the HTTP client, the SSE parser and the remote ``darts``
commands (searches, trainings, studies).

Nothing in this subpackage imports torch (``tests/service/test_imports.py`` holds that), so every
remote ``darts`` command starts in a fraction of a second.
"""
