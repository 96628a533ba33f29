"""Budget leases: a slice of a key's budgets that one edge admits requests from on its own.

Authorizing every request with control costs a round trip on the request's path. A lease
moves that off it: control takes a slice of every budget on a key's chain in one
transaction — the same conditional holds as a reservation, so the sum of what leases and
reservations hold never passes a limit, on any number of edges — and the edge then admits
requests of that key and model by counting them against the slice, until the lease's ttl
passes. Then it returns what it did not use. By operation:

- :mod:`.grant` — granting a lease, sized after the request that asked for it;
- :mod:`.settle` — each admitted request's row, written closed by its settle (part of the one
  settle, :mod:`claudeopus.control.ledger.settle`);
- :mod:`.recover` — what an edge killed while it held leases tells once it starts again;
- :mod:`.ends` — returning a lease, and the sweeper closing one nobody returned;
- :mod:`.hints` — telling a BUDGET_EXHAUSTED refusal when the leases holding the budget end;
- :mod:`.fence` — a change that takes rights away waits until no lease admits at the old terms;
- :mod:`.rows` — the usage rows opened from a lease.

The budget counters always equal the usage rows plus what live leases hold (``open_*``).
"""
