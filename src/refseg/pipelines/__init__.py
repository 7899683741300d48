"""Whole runs as library calls: what ``refseg predict`` and ``refseg reproduce`` do, without click.

Each pipeline reports its steps to a :class:`~refseg.pipelines.reporter.Reporter` (by default
the log); the command line passes one that prints them.
"""
