import django.db.models.deletion
from django.db import migrations, models

import analytics.models


class Migration(migrations.Migration):

    dependencies = [
        ('analytics', '0007_group_assignments'),
    ]

    operations = [
        migrations.AddField(
            model_name='calculator',
            name='messages_source',
            field=models.JSONField(default=analytics.models.device_source),
        ),
        migrations.CreateModel(
            name='CalculatorSource',
            fields=[
                ('id', models.BigIntegerField(editable=False, primary_key=True, serialize=False)),
                ('account_id', models.BigIntegerField(db_index=True)),
                ('created', models.FloatField(help_text='unix time')),
                ('calculator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='source_links', to='analytics.calculator')),
                ('source', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='dependent_links', to='analytics.calculator')),
            ],
            options={
                'ordering': ['calculator_id', 'source_id'],
                'indexes': [models.Index(fields=['source'], name='calculator_source_source_idx')],
                'constraints': [models.UniqueConstraint(fields=('calculator', 'source'), name='calculator_source_unique'), models.CheckConstraint(condition=models.Q(('calculator', models.F('source')), _negated=True), name='calculator_source_not_self')],
            },
        ),
    ]
