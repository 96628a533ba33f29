"""What tokens cost at a price per million tokens (shared by control, which charges, and the edge,
which prices requests it admits from a lease): integers only, rounded up, saturating at the largest
value a BIGINT column holds.

Example::

    cost_micros(1_000, 200, input_price=2_500_000, output_price=10_000_000)  # 4_500 micro-units
"""

from __future__ import annotations

TOKENS_PER_PRICE_UNIT = 1_000_000
MAX_STORED_COST = 2**63 - 1  # the largest BIGINT: an absurd token count saturates instead of failing


def cost_micros(input_tokens: int, output_tokens: int, input_price: int, output_price: int) -> int:
    """What the tokens cost at prices per million tokens, rounded up to a whole micro-unit (exact)."""
    total = input_tokens * input_price + output_tokens * output_price
    return -(-total // TOKENS_PER_PRICE_UNIT)


def capped_cost_micros(input_tokens: int, output_tokens: int, input_price: int, output_price: int) -> int:
    """:func:`cost_micros`, saturated at :data:`MAX_STORED_COST`."""
    return min(MAX_STORED_COST, cost_micros(input_tokens, output_tokens, input_price, output_price))
