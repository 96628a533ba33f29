"""``claudeopus admin prices``: price tables (micro-units per million tokens)."""

from __future__ import annotations

from typing import Annotated

import typer

from claudeopus.cli.admin._common import ControlOpt, JsonOpt, KeyOpt, call, connection, emit_message
from claudeopus.cli.output import emit_json, emit_record, emit_rows, to_dict

app = typer.Typer(help="Prices per model: base prices (admin) and markups (resellers).", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The price, prices/N.")]
InputOpt = Annotated[int, typer.Option("--input", help="Micro-units per million input tokens.", min=0)]
OutputOpt = Annotated[int, typer.Option("--output", help="Micro-units per million output tokens.", min=0)]
# How a price set by an account above the caller's is shown: who set it is not the caller's business.
SET_ABOVE = "(above you)"


@app.command("create")
def create(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="The model, exactly as clients name it.")],
    input_micros: InputOpt,
    output_micros: OutputOpt,
    account: Annotated[str, typer.Option(help="Account to set it on (accounts/N); default: yours.")] = "",
    request_id: Annotated[str, typer.Option(help="Idempotency id.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a price for MODEL on an account of your subtree (never below the parent's)."""
    price = call(
        connection(context, control, key),
        as_json,
        lambda c: c.create_price(
            model=model,
            input_micros=input_micros,
            output_micros=output_micros,
            parent=account,
            request_id=request_id,
        ),
    )
    emit_message("price", price, as_json)


@app.command("get")
def get(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one price."""
    emit_message("price", call(connection(context, control, key), as_json, lambda c: c.get_price(name)), as_json)


@app.command("list")
def list_(
    context: typer.Context,
    account: Annotated[str, typer.Option(help="Whose prices (accounts/N); default: yours.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the prices set on an account, by model."""
    rows = call(
        connection(context, control, key), as_json, lambda c: [to_dict(p) for p in c.iter_prices(parent=account)]
    )
    if as_json:
        emit_json({"prices": rows})
    else:
        columns = ["name", "model", "input_micros_per_million", "output_micros_per_million", "set_by", "update_time"]
        emit_rows("prices", columns, [{**row, "set_by": row["set_by"] or SET_ABOVE} for row in rows])


@app.command("update")
def update(
    context: typer.Context,
    name: NameArg,
    input_micros: Annotated[int | None, typer.Option("--input", help="New input price.", min=0)] = None,
    output_micros: Annotated[int | None, typer.Option("--output", help="New output price.", min=0)] = None,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the input and/or output amount of a price set by your account or below it."""
    if input_micros is None and output_micros is None:
        raise typer.BadParameter("give --input and/or --output")
    price = call(
        connection(context, control, key),
        as_json,
        lambda c: c.update_price(name, input_micros=input_micros, output_micros=output_micros),
    )
    emit_message("price", price, as_json)


@app.command("delete")
def delete(
    context: typer.Context, name: NameArg, control: ControlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Remove a price set by your account or below it; the account falls back to its ancestors' prices."""
    call(connection(context, control, key), as_json, lambda c: c.delete_price(name))
    if as_json:
        emit_json({"deleted": name})
    else:
        typer.echo(f"deleted {name}")


@app.command("resolve")
def resolve(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="The model.")],
    account: Annotated[str, typer.Option(help="The account (accounts/N); default: yours.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The price in force for MODEL on an account (what its requests cost) and where it comes from.

    Prices set above your account show as one inherited figure; yours and those below you are listed.
    """
    reply = call(connection(context, control, key), as_json, lambda c: c.resolve_price(model=model, account=account))
    if as_json:
        emit_json(to_dict(reply))
        return
    inherited = reply.inherited if reply.HasField("inherited") else None
    emit_record(
        f"price in force for {model}",
        {
            "priced": reply.priced,
            "input_micros_per_million": reply.input_micros_per_million,
            "output_micros_per_million": reply.output_micros_per_million,
            "inherited (set above you)": "none"
            if inherited is None
            else f"{inherited.input_micros_per_million} / {inherited.output_micros_per_million}",
            "from": [
                f"{p.name} on {p.account}: {p.input_micros_per_million} / {p.output_micros_per_million}"
                for p in reply.sources
            ],
        },
    )
