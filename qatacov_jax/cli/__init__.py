"""Command-line entry points, one module per script in `scripts/`, all in one style:
absl flags (`--name=value`; `--config` files with `--config.<field>=` overrides through
ml_collections), each parsed into a fresh `FlagValues`, so `main(argv)` can be called
repeatedly in one process (tests do) and returns the exit code:
0 done, 1 done but some inputs failed, 2 refused (bad setting or input, named in one line).

This is the top of the dependency graph: nothing in the library imports it.
"""
