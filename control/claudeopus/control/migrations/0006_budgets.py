from tortoise import migrations
from tortoise.migrations import operations as ops
from claudeopus.control.models import BudgetMetric, BudgetPeriod
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index, PartialIndex

class Migration(migrations.Migration):
    dependencies = [('control', '0005_suspended_by')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Budget',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('account', fields.ForeignKeyField('control.Account', source_field='account_id', db_constraint=True, to_field='id', related_name='budgets', on_delete=OnDelete.RESTRICT)),
                ('api_key', fields.ForeignKeyField('control.ApiKey', source_field='api_key_id', null=True, db_constraint=True, to_field='id', related_name='budgets', on_delete=OnDelete.RESTRICT)),
                ('owner', fields.CharField(max_length=64)),
                ('metric', fields.IntEnumField(description='INPUT_TOKENS: 1\nOUTPUT_TOKENS: 2\nTOTAL_TOKENS: 3\nCOST_MICROS: 4', enum_type=BudgetMetric, generated=False)),
                ('period', fields.IntEnumField(description='TOTAL: 1\nDAILY: 2\nMONTHLY: 3', enum_type=BudgetPeriod, generated=False)),
                ('limit_amount', fields.BigIntField()),
                ('set_by', fields.BigIntField()),
                ('create_request_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'budget', 'app': 'control', 'unique_together': (('owner', 'metric', 'period'), ('owner', 'create_request_id')), 'indexes': [Index(fields=['account_id', 'api_key_id'])], 'pk_attr': 'id', 'table_description': 'A limit on one metric over one period, on an account or (``api_key`` set) on one of its keys.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='BudgetCounter',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('budget', fields.ForeignKeyField('control.Budget', source_field='budget_id', db_constraint=True, to_field='id', related_name='counters', on_delete=OnDelete.CASCADE)),
                ('period_index', fields.BigIntField()),
                ('metric', fields.IntEnumField(description='INPUT_TOKENS: 1\nOUTPUT_TOKENS: 2\nTOTAL_TOKENS: 3\nCOST_MICROS: 4', enum_type=BudgetMetric, generated=False)),
                ('spent', fields.BigIntField(default=0)),
                ('reserved', fields.BigIntField(default=0)),
            ],
            options={'table': 'budget_counter', 'app': 'control', 'unique_together': (('budget_id', 'period_index'),), 'pk_attr': 'id', 'table_description': 'What one budget has spent and holds reserved in one period.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='UsageRecord',
            name='reserved_cost_micros',
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='UsageRecord',
            name='reserved_counters',
            field=fields.CharField(default='', db_default='', max_length=1000),
        ),
        ops.AddIndex(
            model_name='UsageRecord',
            index=PartialIndex(fields=['created_at'], name='usage_record_open_idx', condition={'status': 1}),
        ),
    ]
