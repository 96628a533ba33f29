"""Metering: admitting requests against keys and budgets, and settling what they used.

The edge's one port to control's ledger. A request is admitted (``admit``) and answered with a
ticket; the ticket settles the outcome. Behind it: budget leases held by this edge or a batched
authorize round trip, batched settles, a spool that keeps settles while control is unreachable,
and the recovery of what a crashed process held.
"""
