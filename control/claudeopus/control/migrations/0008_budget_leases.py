from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('control', '0007_auth_epoch')]

    initial = False

    operations = [
        ops.CreateModel(
            name='BudgetLease',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('lease_id', fields.UUIDField(unique=True)),
                ('api_key', fields.ForeignKeyField('control.ApiKey', source_field='api_key_id', db_constraint=True, to_field='id', related_name='leases', on_delete=OnDelete.RESTRICT)),
                ('account', fields.ForeignKeyField('control.Account', source_field='account_id', db_constraint=True, to_field='id', related_name='leases', on_delete=OnDelete.RESTRICT)),
                ('model', fields.CharField(max_length=200)),
                ('unlimited', fields.BooleanField(default=False)),
                ('reserved_counters', fields.CharField(default='', max_length=1000)),
                ('granted_input_tokens', fields.BigIntField(default=0)),
                ('granted_output_tokens', fields.BigIntField(default=0)),
                ('granted_cost_micros', fields.BigIntField(default=0)),
                ('open_input_tokens', fields.BigIntField(default=0)),
                ('open_output_tokens', fields.BigIntField(default=0)),
                ('open_cost_micros', fields.BigIntField(default=0)),
                ('requests_opened', fields.BigIntField(default=0)),
                ('requests_admitted', fields.BigIntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'budget_lease', 'app': 'control', 'indexes': [Index(fields=['expires_at'])], 'pk_attr': 'id', 'table_description': "A slice of a key's budgets held by one edge, which admits requests of one model from it alone."},
            bases=['Model'],
        ),
    ]
