import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from regions.services import topology_sync


class Command(BaseCommand):
    help = (
        "Prepare the platform: migrate the control database and every datacenter database, mirror "
        "the configured regions and datacenters, and create a superuser on first start."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-superuser", action="store_true", help="do not create a superuser")

    def handle(self, *args, **options):
        aliases = list(settings.DATABASES)
        for number, alias in enumerate(aliases, start=1):
            self.stdout.write(f"[{number}/{len(aliases)}] migrating database {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=0)
        regions, datacenters = topology_sync()
        self.stdout.write(f"topology: {regions} regions, {datacenters} datacenters")
        User = get_user_model()
        if options["no_superuser"] or User.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username="admin", email="", password=password)
        self.stdout.write(self.style.WARNING(f"created superuser admin with password {password} (shown once; /admin/)"))
