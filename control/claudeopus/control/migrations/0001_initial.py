from tortoise import migrations
from tortoise.migrations import operations as ops
from claudeopus.control.models import AccountState, Role, Scope, UsageSource, UsageStatus
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Account',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('email', fields.CharField(unique=True, max_length=320)),
                ('display_name', fields.CharField(default='', max_length=200)),
                ('role', fields.IntEnumField(description='ADMIN: 1\nRESELLER: 2\nUSER: 3', enum_type=Role, generated=False)),
                ('parent', fields.ForeignKeyField('control.Account', source_field='parent_id', null=True, db_constraint=True, to_field='id', related_name='children', on_delete=OnDelete.RESTRICT)),
                ('path', fields.CharField(default='', db_index=True, max_length=1000)),
                ('state', fields.IntEnumField(default=AccountState.ACTIVE, description='ACTIVE: 1\nSUSPENDED: 2', enum_type=AccountState, generated=False)),
                ('password_hash', fields.CharField(null=True, max_length=200)),
                ('create_request_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'account', 'app': 'control', 'unique_together': (('parent_id', 'create_request_id'),), 'pk_attr': 'id', 'table_description': 'A node of the reseller hierarchy.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ApiKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('account', fields.ForeignKeyField('control.Account', source_field='account_id', db_constraint=True, to_field='id', related_name='api_keys', on_delete=OnDelete.RESTRICT)),
                ('key_hash', fields.CharField(unique=True, max_length=64)),
                ('prefix', fields.CharField(max_length=16)),
                ('display_name', fields.CharField(default='', max_length=200)),
                ('scopes', fields.SmallIntField(default=Scope.INFERENCE)),
                ('allowed_models', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('create_request_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('expires_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'api_key', 'app': 'control', 'unique_together': (('account_id', 'create_request_id'),), 'pk_attr': 'id', 'table_description': 'An API key. Only the SHA-256 of its secret is stored.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='InstanceValue',
            fields=[
                ('name', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('value', fields.BinaryField()),
            ],
            options={'table': 'instance_value', 'app': 'control', 'pk_attr': 'name', 'table_description': 'Installation-wide values shared by every control replica (page-token key, bootstrap marker).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='UsageRecord',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('request_id', fields.UUIDField(unique=True)),
                ('api_key', fields.ForeignKeyField('control.ApiKey', source_field='api_key_id', db_constraint=True, to_field='id', related_name='usage_records', on_delete=OnDelete.RESTRICT)),
                ('account', fields.ForeignKeyField('control.Account', source_field='account_id', db_constraint=True, to_field='id', related_name='usage_records', on_delete=OnDelete.RESTRICT)),
                ('model', fields.CharField(max_length=200)),
                ('input_tokens', fields.BigIntField(default=0)),
                ('output_tokens', fields.BigIntField(default=0)),
                ('estimated_input_tokens', fields.BigIntField(default=0)),
                ('max_output_tokens', fields.BigIntField(default=0)),
                ('latency_us', fields.BigIntField(default=0)),
                ('status', fields.IntEnumField(default=UsageStatus.RESERVED, description='RESERVED: 1\nSUCCEEDED: 2\nUPSTREAM_ERROR: 3\nCLIENT_DISCONNECTED: 4\nEXPIRED: 5', enum_type=UsageStatus, generated=False)),
                ('source', fields.IntEnumField(default=UsageSource.NONE, description='NONE: 0\nREPORTED: 1\nESTIMATED: 2\nRESERVED: 3', enum_type=UsageSource, generated=False)),
                ('http_status', fields.SmallIntField(default=0)),
                ('stream', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('settled_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'usage_record', 'app': 'control', 'indexes': [Index(fields=['account_id', 'created_at', 'id']), Index(fields=['api_key_id', 'created_at', 'id']), Index(fields=['created_at', 'id'])], 'pk_attr': 'id', 'table_description': 'Usage metadata of one authorized completion, never any content.'},
            bases=['Model'],
        ),
    ]
