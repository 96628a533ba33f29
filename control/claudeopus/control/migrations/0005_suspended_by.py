from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('control', '0004_prices_and_cost')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Account',
            name='suspended_by',
            field=fields.BigIntField(null=True),
        ),
    ]
