"""``claudeopus admin budgets``: spending limits on accounts and API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from claudeopus.cli.admin._common import (
    ControlOpt,
    JsonOpt,
    KeyOpt,
    call,
    choice,
    connection,
    emit_message,
)
from claudeopus.cli.output import emit_json, emit_rows, to_dict

app = typer.Typer(help="Budgets: limits on tokens or cost per day, month or in total.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The budget, budgets/N.")]
METRICS = ("input_tokens", "output_tokens", "total_tokens", "cost_micros")
PERIODS = ("total", "daily", "monthly")
LimitOpt = Annotated[int, typer.Option(help="The most that may be spent in one period (tokens or micro-units).", min=0)]
COLUMNS = ["name", "owner", "metric", "period", "limit", "spent", "reserved", "remaining", "period_end_time"]


def _row(budget: dict[str, Any]) -> dict[str, Any]:
    """A listed budget for people: ``cost_micros`` and ``monthly`` rather than the enum names."""
    return {
        **budget,
        "metric": str(budget["metric"]).removeprefix("BUDGET_METRIC_").lower(),
        "period": str(budget["period"]).removeprefix("BUDGET_PERIOD_").lower(),
    }


@app.command("create")
def create(
    context: typer.Context,
    owner: Annotated[str, typer.Option(help="An account below yours (accounts/N) or a key (apiKeys/N).")],
    metric: Annotated[str, typer.Option(help="input_tokens, output_tokens, total_tokens or cost_micros.")],
    period: Annotated[str, typer.Option(help="total, daily or monthly (UTC days and months).")],
    limit: LimitOpt,
    request_id: Annotated[str, typer.Option(help="Idempotency id.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a budget; it starts with what OWNER already spent in the current period."""
    choice(metric, METRICS, "--metric")
    choice(period, PERIODS, "--period")
    budget = call(
        connection(context, control, key),
        as_json,
        lambda c: c.create_budget(owner, metric=metric, period=period, limit=limit, request_id=request_id),
    )
    emit_message("budget", budget, as_json)


@app.command("get")
def get(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one budget with what is spent and reserved in its current period."""
    emit_message("budget", call(connection(context, control, key), as_json, lambda c: c.get_budget(name)), as_json)


@app.command("list")
def list_(
    context: typer.Context,
    owner: Annotated[str, typer.Option(help="Whose budgets (accounts/N or apiKeys/N); default: your account.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the budgets set on an account or a key, oldest first (all pages)."""
    rows = call(connection(context, control, key), as_json, lambda c: [to_dict(b) for b in c.iter_budgets(owner)])
    if as_json:
        emit_json({"budgets": rows})
    else:
        emit_rows("budgets", COLUMNS, [_row(b) for b in rows])


@app.command("update")
def update(
    context: typer.Context,
    name: NameArg,
    limit: LimitOpt,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a budget's limit (0 refuses every further request)."""
    emit_message(
        "budget",
        call(connection(context, control, key), as_json, lambda c: c.update_budget(name, limit=limit)),
        as_json,
    )


@app.command("delete")
def delete(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Remove a budget; requests already admitted settle normally."""
    call(connection(context, control, key), as_json, lambda c: c.delete_budget(name))
    if as_json:
        emit_json({"deleted": name})
    else:
        typer.echo(f"deleted {name}")
