"""The `portfolio-sync` command: typer commands and exit codes (`main`), console output and
progress bars (`console`), the demo (`demo`) and the commented config template
(`init_file`).

The top layer: may import everything below it (`web`, `runtime`, `wiring`, `backends`, …);
nothing imports it. The console script entry point is `portfolio_sync.cli.main:main`.
"""
