"""Drivers behind the reconciler's small interfaces: object storage (`storage`, with the
local `folder_walker` helper process; `supabase_db` reads Supabase's `storage.objects`),
the user's table and our own tables (`catalog`, `schema`), the SQLite row-trigger
`outbox`, and PostgreSQL `pg_setup`.

May import `config`, `models`, `errors`, `layout`, `queue` and `sources` (trigger SQL, job
names); never `reconcile`, `runtime`, `web` or `cli`: business logic sees these through
interfaces, never the other way round.
"""
