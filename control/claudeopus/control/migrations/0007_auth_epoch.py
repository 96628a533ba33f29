from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

# Tables whose rows Authorize reads (and a control process caches): any change bumps the epoch.
WATCHED = ('account', 'api_key', 'budget', 'price')

POSTGRES_UP = [
    "INSERT INTO auth_epoch (id, value) VALUES (1, 0)",
    """CREATE FUNCTION claudeopus_bump_auth_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE auth_epoch SET value = value + 1 WHERE id = 1;
    RETURN NULL;
END
$$""",
    # Deferred to commit: the epoch row is the last lock a changing transaction takes, so it
    # cannot invert the order of the locks the change itself takes.
    *(
        f"CREATE CONSTRAINT TRIGGER {table}_auth_epoch AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION claudeopus_bump_auth_epoch()"
        for table in WATCHED
    ),
]
POSTGRES_DOWN = [
    *(f"DROP TRIGGER IF EXISTS {table}_auth_epoch ON {table}" for table in WATCHED),
    "DROP FUNCTION IF EXISTS claudeopus_bump_auth_epoch()",
]
SQLITE_UP = [
    "INSERT INTO auth_epoch (id, value) VALUES (1, 0)",
    *(
        f"CREATE TRIGGER {table}_auth_epoch_{event.lower()} AFTER {event} ON {table} "
        "BEGIN UPDATE auth_epoch SET value = value + 1 WHERE id = 1; END"
        for table in WATCHED
        for event in ('INSERT', 'UPDATE', 'DELETE')
    ),
]
SQLITE_DOWN = [
    f"DROP TRIGGER IF EXISTS {table}_auth_epoch_{event.lower()}"
    for table in WATCHED
    for event in ('INSERT', 'UPDATE', 'DELETE')
]


async def _run(schema_editor, statements) -> None:
    for statement in statements:
        await schema_editor.client.execute_script(statement)


async def add_triggers(apps, schema_editor) -> None:
    postgres = schema_editor.client.capabilities.dialect == 'postgres'
    await _run(schema_editor, POSTGRES_UP if postgres else SQLITE_UP)


async def drop_triggers(apps, schema_editor) -> None:
    postgres = schema_editor.client.capabilities.dialect == 'postgres'
    await _run(schema_editor, POSTGRES_DOWN if postgres else SQLITE_DOWN)


class Migration(migrations.Migration):
    dependencies = [('control', '0006_budgets')]

    initial = False

    operations = [
        ops.CreateModel(
            name='AuthEpoch',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('value', fields.BigIntField(default=0)),
            ],
            options={'table': 'auth_epoch', 'app': 'control', 'pk_attr': 'id', 'table_description': 'One row whose ``value`` grows with every committed change to what Authorize reads.'},
            bases=['Model'],
        ),
        ops.RunPython(add_triggers, drop_triggers),
    ]
