"""Moves of accounts between datacenters (``accounts.moves``): the move record and the placement
version in the control database; in every datacenter database the journal that a move's source
keeps of the changes made while it copies, and the trigger functions that write it (the
triggers themselves exist only while a move copies out of that database)."""


import django.db.models.deletion
from django.db import migrations, models

JOURNAL = """
CREATE TABLE move_journal (
    id bigserial PRIMARY KEY,
    device_id bigint NOT NULL,
    begin_ts bigint,
    end_ts bigint,
    calc_id bigint,
    interval_id bigint
);
CREATE FUNCTION move_journal_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO move_journal (device_id, begin_ts, end_ts) VALUES (NEW.device_id, NEW.begin_ts, NEW.end_ts);
    RETURN NULL;
END $$;
CREATE FUNCTION move_journal_intervals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO move_journal (device_id, calc_id, interval_id) VALUES (OLD.device_id, OLD.calc_id, OLD.id);
    ELSE
        INSERT INTO move_journal (device_id, calc_id, interval_id) VALUES (NEW.device_id, NEW.calc_id, NEW.id);
    END IF;
    RETURN NULL;
END $$;
"""
JOURNAL_DROP = """
DROP FUNCTION move_journal_intervals();
DROP FUNCTION move_journal_messages();
DROP TABLE move_journal;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_account_created_unix_seconds'),
        ('regions', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='PlacementVersion',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('version', models.BigIntegerField(default=0)),
            ],
            options={
                'ordering': ['id'],
            },
        ),
        migrations.CreateModel(
            name='AccountMove',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('account_ids', models.JSONField(default=list, help_text='the accounts of the subtree that move')),
                ('state', models.CharField(choices=[('copying', 'copying'), ('switched', 'switched'), ('done', 'done')], default='copying', max_length=16)),
                ('started', models.FloatField(help_text='unix time')),
                ('switched', models.FloatField(blank=True, help_text='unix time', null=True)),
                ('finished', models.FloatField(blank=True, help_text='unix time', null=True)),
                ('tables', models.JSONField(blank=True, default=dict)),
                ('account', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='moves', to='accounts.account')),
                ('region', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='regions.region')),
                ('source', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='regions.datacenter')),
                ('target', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='regions.datacenter')),
            ],
            options={
                'ordering': ['id'],
                'constraints': [models.UniqueConstraint(condition=models.Q(('state', 'done'), _negated=True), fields=('region',), name='account_move_one_unfinished_per_region')],
            },
        ),
        migrations.RunSQL(JOURNAL, JOURNAL_DROP, hints={"target": "regional"}),
    ]
