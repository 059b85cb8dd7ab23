from django.core.management.base import BaseCommand, CommandError

from accounts.choices import AccessType
from accounts.models import Account
from accounts.services import account_create, token_create
from flespi_site.errors import DomainError


class Command(BaseCommand):
    help = "Create an account (root, or a subaccount with --parent) and optionally a master token."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--parent", type=int, help="id of the parent account")
        parser.add_argument("--region", help="region code (first-level subaccounts only)")
        parser.add_argument("--datacenter", help="datacenter code within the region")
        parser.add_argument("--token", action="store_true", help="also create a master token; its key is printed last")

    def handle(self, *args, **options):
        parent = None
        if options["parent"] is not None:
            parent = Account.objects.filter(pk=options["parent"]).first()
            if parent is None:
                raise CommandError(f"parent account {options['parent']} does not exist")
        try:
            account = account_create(
                name=options["name"], parent=parent, region_code=options["region"], datacenter_code=options["datacenter"]
            )
        except DomainError as exc:
            raise CommandError(exc.reason) from None
        self.stdout.write(
            f"account {account.pk} {account.name!r} in region {account.region.code}, datacenter {account.datacenter.code}"
        )
        if options["token"]:
            token, key = token_create(account=account, info="created by account_create", access_type=AccessType.MASTER)
            self.stdout.write(f"master token {token.pk} (the key is shown once):")
            self.stdout.write(key)
