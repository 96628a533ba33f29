"""Metering: admitting requests against keys and budgets, and settling what they used.

The request path talks to one object, :class:`~claudeopus.edge.metering.meter.Metering`: a
request is admitted (``admit``) and answered with a ticket; the ticket settles the outcome.
Behind it: budget leases held by this edge (``leases``) or a batched authorize round trip
(``authorizer``), batched settles (``settler``; both batch through ``batcher``), a spool that
keeps settles while control is unreachable, and the recovery of what a crashed process held.
Control is reached only through the :class:`~claudeopus.edge.metering.port.ControlPort`
(``port``), carried over gRPC by ``grpc_control``; ``refusals`` says what the client gets when
control refuses; ``types`` holds the edge's own metering types.
"""
