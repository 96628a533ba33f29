"""Control's hand-written SQL outside the ledger, and the helpers every such statement uses.

The ORM builds most statements; the few written by hand (hot-path inserts, aggregate
summaries, the auth epoch) live here, so domain modules hold the rules and call these.
Column types come from the Tortoise models (:func:`~claudeopus.control.store.sql.pg_types`),
never restated per statement; every value is a bound parameter (:class:`~.sql.Binder`).

- :mod:`.sql`: placeholders, bound values and column types.
- :mod:`.usage_rows`: opening usage rows (one INSERT per authorize, one per batch).
- :mod:`.usage`: the usage listing's query and the usage summary statement.
- :mod:`.auth_epoch`: reading the auth epoch.
"""
