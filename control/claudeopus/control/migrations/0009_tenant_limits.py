from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields

# Rows from before this migration do not say who set them. The safe reading: a price or a key limit
# on an account with a parent was set from above (the parent may still change it; the account
# itself may only narrow it). Null in a *_set_by column means "the row's own account".
BACKFILL = [
    "UPDATE price SET set_by = COALESCE((SELECT parent_id FROM account WHERE account.id = price.account_id), account_id)",
    "UPDATE api_key SET issued_by = account_id",
    *(
        f"UPDATE api_key SET {column} = (SELECT parent_id FROM account WHERE account.id = api_key.account_id)"
        f" WHERE {condition}"
        for column, condition in (
            ('models_set_by', 'allowed_models IS NOT NULL'),
            ('expiry_set_by', 'expires_at IS NOT NULL'),
            ('scopes_set_by', '1 = 1'),
        )
    ),
]


async def backfill(apps, schema_editor) -> None:
    for statement in BACKFILL:
        await schema_editor.client.execute_script(statement)


async def nothing(apps, schema_editor) -> None:
    return None


class Migration(migrations.Migration):
    dependencies = [('control', '0008_budget_leases')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Account',
            name='policy_allowed_models',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddField(
            model_name='Account',
            name='policy_management_keys',
            field=fields.BooleanField(default=True, db_default=True),
        ),
        ops.AddField(
            model_name='Account',
            name='policy_max_key_lifetime_seconds',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='Account',
            name='policy_set_by',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='expiry_set_by',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='issued_by',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='minted_by_session',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='models_set_by',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='scopes_set_by',
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name='Price',
            name='set_by',
            field=fields.BigIntField(null=True),
        ),
        ops.RunPython(backfill, nothing),
    ]
