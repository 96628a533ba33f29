from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('control', '0002_issue3_accounts_keys_sessions')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='UsageRecord',
            index=Index(fields=['account_id', 'id']),
        ),
        ops.AddIndex(
            model_name='UsageRecord',
            index=Index(fields=['api_key_id', 'id']),
        ),
    ]
