# Doctests are collected from src/softxent; the command-line entry point must not run on import.
collect_ignore = ["src/softxent/__main__.py"]
