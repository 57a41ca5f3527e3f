"""Benchmarks (STYLE rule 15): run via ``make bench``, never collected by pytest."""
