"""Benchmark implementations behind tools/benchmark.py (one module per subcommand).

Each module has ``add_arguments(parser)`` and ``main(args)``; ``main`` prints a table and, as its
last line, one JSON object with the figures.
"""
