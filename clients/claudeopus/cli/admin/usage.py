"""``claudeopus admin usage``: usage records and summaries of your subtree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from claudeopus.cli.admin._common import ControlOpt, JsonOpt, KeyOpt, call, choice, connection
from claudeopus.cli.output import emit_json, emit_rows, to_dict
from claudeopus.client import Client

app = typer.Typer(help="Usage records and summaries.", no_args_is_help=True)
SinceOpt = Annotated[datetime | None, typer.Option(help="From this time (ISO 8601, UTC).")]
UntilOpt = Annotated[datetime | None, typer.Option(help="Before this time (ISO 8601, UTC).")]


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@app.command("list")
def list_(
    context: typer.Context,
    parent: Annotated[str, typer.Option("--parent", help="Subtree root (accounts/N); default: yours.")] = "",
    account: Annotated[str, typer.Option(help="Only this account (accounts/N), not its subtree.")] = "",
    api_key: Annotated[str, typer.Option("--api-key", help="Only this key (apiKeys/N).")] = "",
    model: Annotated[str, typer.Option(help="Only this model.")] = "",
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many records (newest first).", min=1)] = 50,
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List usage records of your subtree, newest first."""

    def collect(client: Client) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        records = client.iter_usage_records(
            parent=parent,
            account=account,
            api_key=api_key,
            model=model,
            start_time=_utc(since),
            end_time=_utc(until),
            page_size=min(limit, 1000),
        )
        for record in records:
            rows.append(to_dict(record))
            if len(rows) >= limit:
                break
        return rows

    rows = call(connection(context, control, key), as_json, collect)
    if as_json:
        emit_json({"usage_records": rows})
        return
    columns = ["create_time", "request_id", "api_key", "model", "input_tokens", "output_tokens", "cost_micros"]
    emit_rows("usage records", [*columns, "status", "source"], rows)


@app.command("summary")
def summary(
    context: typer.Context,
    group_by: Annotated[
        list[str] | None, typer.Option("--by", help="Group by api_key, account and/or model (repeat).")
    ] = None,
    interval: Annotated[str | None, typer.Option(help="Bucket by hour, day or month (UTC).")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    days: Annotated[int, typer.Option(help="Without --since: the last N days.", min=1, max=36500)] = 30,
    parent: Annotated[str, typer.Option("--parent", help="Subtree root (accounts/N); default: yours.")] = "",
    api_key: Annotated[str, typer.Option("--api-key", help="Only this key (apiKeys/N).")] = "",
    model: Annotated[str, typer.Option(help="Only this model.")] = "",
    control: ControlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Requests, tokens and latency p50/p95, grouped and bucketed."""
    groups = group_by or []
    for group in groups:
        choice(group, ("api_key", "account", "model"), "--by")
    choice(interval, ("hour", "day", "month"), "--interval")
    start = _utc(since) or datetime.now(UTC) - timedelta(days=days)
    reply = call(
        connection(context, control, key),
        as_json,
        lambda c: c.summarize_usage(
            start_time=start,
            end_time=_utc(until),
            group_by=groups,
            interval=interval,
            parent=parent,
            api_key=api_key,
            model=model,
        ),
    )
    rows = [to_dict(s) for s in reply.summaries]
    if as_json:
        emit_json({"summaries": rows})
        return
    columns = [*(["interval_start"] if interval else []), *groups]
    columns += ["requests", "input_tokens", "output_tokens", "cost_micros", "latency_p50", "latency_p95"]
    emit_rows("usage summary", columns, rows)
