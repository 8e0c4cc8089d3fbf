"""The HTTP side: the ASGI app (`app`), webhook intake (`intake`), the dashboard
(`dashboard`, `templates/`), the one place exceptions become HTTP responses (`errors`), and
the uvicorn runner (`serve`).

May import the core (`runtime`, `wiring`, `reconcile`, `config`, `models`, `errors`, …),
`backends`, `queue` and `sources`; nothing below imports this package, so the writer never
depends on HTTP. Only `cli` sits above it.
"""
