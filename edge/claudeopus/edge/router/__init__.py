"""The router: which upstream deployment serves a request, and which to try next when one fails.

- :mod:`~claudeopus.edge.router.table`: one immutable version of the routes (public ids and
  aliases to deployments; unknown names pass through to the default upstream when there is one).
- :mod:`~claudeopus.edge.router.choice`: the order of a model's deployments for one request
  (lowest priority number first, weighted random among equals).
- :mod:`~claudeopus.edge.router.health`: outlier ejection (a deployment failing N times in a row
  cools down for a time that grows on repeated failure, then gets one probe; an upstream 429 with
  ``Retry-After`` cools it that long).

Both are plain code on the edge's own state: no lookup, no I/O per request.
"""
