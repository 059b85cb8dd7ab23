import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Region",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("code", models.CharField(max_length=32, unique=True)),
                ("rest_url", models.CharField(max_length=255)),
                ("mqtt_url", models.CharField(max_length=255)),
                ("is_default", models.BooleanField(default=False)),
            ],
            options={"ordering": ["code"]},
        ),
        migrations.CreateModel(
            name="Datacenter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("code", models.CharField(max_length=32, unique=True)),
                ("number", models.PositiveSmallIntegerField(unique=True)),
                ("is_default", models.BooleanField(default=False)),
                ("region", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="datacenters", to="regions.region")),
            ],
            options={"ordering": ["code"]},
        ),
        migrations.AddConstraint(
            model_name="region",
            constraint=models.UniqueConstraint(condition=models.Q(("is_default", True)), fields=("is_default",), name="region_single_default"),
        ),
        migrations.AddConstraint(
            model_name="datacenter",
            constraint=models.UniqueConstraint(condition=models.Q(("is_default", True)), fields=("region",), name="datacenter_single_default_per_region"),
        ),
        migrations.AddConstraint(
            model_name="datacenter",
            constraint=models.CheckConstraint(condition=models.Q(("number__gte", 1), ("number__lte", 1023)), name="datacenter_number_range"),
        ),
        migrations.RunSQL(
            "CREATE SEQUENCE IF NOT EXISTS flespi_entity_id_seq",
            "DROP SEQUENCE IF EXISTS flespi_entity_id_seq",
            hints={"target": "regional"},
        ),
    ]
