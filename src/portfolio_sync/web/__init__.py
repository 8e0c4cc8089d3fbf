"""The HTTP side: the ASGI app (`app`), webhook intake (`intake`), the operator console
(`dashboard` pages, `actions` buttons, `session` rules, `reads`/`views` behind them,
`templating` with `templates/` and `static/`), offline API docs (`docs`), the one place
exceptions become HTTP responses (`errors`), and the uvicorn runner (`serve`).

May import the core (`runtime`, `wiring`, `reconcile`, `config`, `models`, `errors`, …),
`backends`, `queue` and `sources`; nothing below imports this package, so the writer never
depends on HTTP. Only `cli` sits above it.
"""
