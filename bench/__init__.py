"""The ClaudeOpus benchmark: what the gateway costs against calling the upstream directly and a bare relay.

Run it with ``make bench`` or ``python -m bench`` (``--help`` lists the options). It installs
nginx and wrk from Debian's packages when they are missing (as root), starts nginx on
loopback as a fake upstream with canned answers, and measures in one run:

- ``direct``: nginx itself;
- ``bare``: the edge app with control stubbed out (:mod:`bench.bare_edge`);
- ``full``: ``claudeopus control`` on a fresh PostgreSQL database and ``claudeopus edge`` as
  configured by default, with key auth, budgets (on the key and on a reseller above it) held
  through budget leases, and usage settles;
- ``full-no-budget``: the same with a key that has no budget anywhere;
- ``full-unleased``: the full path with leases off (each request authorized with control);
- each of direct, bare, full and full-unleased with streaming, plus time to first byte.

Results go to ``bench/results/latest.md`` and ``latest.json``. Modules:
:mod:`bench.runner` (the run), :mod:`bench.upstream` (nginx), :mod:`bench.wrk` (load),
:mod:`bench.ttfb` (stream first byte), :mod:`bench.gateway` (control, edges, accounts),
:mod:`bench.report` (ratios, targets, markdown), :mod:`bench.tools` (apt).
"""
