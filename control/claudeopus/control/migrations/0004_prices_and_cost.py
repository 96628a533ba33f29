from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('control', '0003_usage_query_indexes')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Price',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('account', fields.ForeignKeyField('control.Account', source_field='account_id', db_constraint=True, to_field='id', related_name='prices', on_delete=OnDelete.RESTRICT)),
                ('model', fields.CharField(max_length=200)),
                ('input_micros_per_million', fields.BigIntField()),
                ('output_micros_per_million', fields.BigIntField()),
                ('create_request_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'price', 'app': 'control', 'unique_together': (('account_id', 'model'), ('account_id', 'create_request_id')), 'pk_attr': 'id', 'table_description': 'A price for one model set on one account, in micro-units per million tokens.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='UsageRecord',
            name='cost_micros',
            field=fields.BigIntField(default=0, db_default=0),
        ),
    ]
