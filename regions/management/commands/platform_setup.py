from django.core.management.base import BaseCommand, CommandError

from regions.setup import SetupError, platform_setup


class Command(BaseCommand):
    help = (
        "Prepare the platform (`flespi migrate`): under a lock in the control database, migrate it and "
        "every datacenter database, mirror the configured regions and datacenters, and create the "
        "superuser admin on first start (its password from ADMIN_PASSWORD, else generated into "
        "FLESPI_STATE_DIR/admin-password, readable by its owner only)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-superuser", action="store_true", help="do not create a superuser")

    def handle(self, *args, no_superuser, **options):
        try:
            platform_setup(say=self.stdout.write, superuser=not no_superuser)
        except SetupError as error:
            raise CommandError(str(error)) from None
