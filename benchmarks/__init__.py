"""Benchmarks of the conversion platform: `python -m benchmarks` (what `make bench` runs).

Each benchmark is a module of this package with `run(...) -> dict` (the figures, JSON
ready) and `main()` (run it alone: `python -m benchmarks.pipeline --sizes 100000`).
`python -m benchmarks` runs every one it finds, prints a table and writes the figures
under `benchmarks/results/`. Benchmarks are not tests: nothing here asserts a time.
"""
