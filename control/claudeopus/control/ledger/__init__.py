"""The ledger: what the edge's requests hold and spend, exactly once per request.

Every admitted request leaves exactly one usage row. Authorizing opens it in state RESERVED,
holding the request's worst case in every budget on its key's chain; settling closes it once
with the real usage; a reservation whose edge never settles is expired by the sweeper. Both
operations come in batches only (a single request is a batch of one). Budget leases let an edge
admit a key's requests on its own from a slice of its budgets.

- :mod:`.keys` — the hot path's key checks (usable now, may use the model, model priced);
- :mod:`.authorize` — batched authorize: key checks, output cap, holds, open rows;
- :mod:`.settle` — batched settle, plain and leased: the one settle;
- :mod:`.closing` — closing rows and moving their counters (settle and expiry);
- :mod:`.reservations` — budget holds and counter moves, in the one global lock order;
- :mod:`.leases` — granting, settling from, recovering, returning and expiring leases, and the fence;
- :mod:`.sweeper` — the owned task that expires stale reservations and leases;
- :mod:`.store` — every hand-written SQL statement of the ledger.

The budget counters always equal the sum of the usage rows plus what live leases hold.
"""
