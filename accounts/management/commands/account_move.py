from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from accounts.moves import MoveReport, account_move
from flespi_site.errors import DomainError


class _Bar:
    """One table's progress: rows, and bytes as the bar's postfix."""

    def __init__(self, table: str, total: int, stream):
        self.bytes = 0
        self.bar = tqdm(total=total, desc=f"{table:<22}", unit=" rows", unit_scale=True, file=stream, leave=True)

    def update(self, rows: int, nbytes: int) -> None:
        self.bytes += nbytes
        self.bar.set_postfix_str(f"{self.bytes / 1e6:.1f} MB", refresh=False)
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()


class Command(BaseCommand):
    help = (
        "Move an account and its subtree to another datacenter of its region while the platform keeps "
        "serving it; writes of the account pause only for the final switch. Rerun it after an interruption: "
        "it resumes or starts over (docs/regions.md, 'Moving an account to another datacenter')."
    )
    # ``checkpoint`` (``accounts.moves.Checkpoint``) only through ``call_command``: no command-line
    # option, the tests stop a real process of the command at a point of the move with it.
    stealth_options = ("checkpoint",)

    def add_arguments(self, parser):
        parser.add_argument("--account", type=int, required=True, help="id of the account")
        parser.add_argument("--to", required=True, help="code of the target datacenter (same region)")
        parser.add_argument("--dry-run", action="store_true", help="print the rows that would move; change nothing")

    def handle(self, *args, **options):
        try:
            report = account_move(
                account_id=options["account"],
                target=options["to"],
                dry_run=options["dry_run"],
                progress=lambda table, total: _Bar(table, total, self.stderr),
                checkpoint=options.get("checkpoint"),
            )
        except DomainError as exc:
            raise CommandError(exc.reason) from None
        self._summary(report)

    def _summary(self, report: MoveReport) -> None:
        accounts = ", ".join(map(str, report.account_ids))
        if report.dry_run:
            self.stdout.write(f"dry run: would move accounts {accounts} from {report.source} to {report.target}")
        else:
            resumed = " (resumed)" if report.resumed else ""
            self.stdout.write(f"moved accounts {accounts} from {report.source} to {report.target}{resumed}")
        self.stdout.write(f"{'table':<24}{'rows':>12}{'MB copied':>12}")
        for table, rows in report.rows.items():
            copied = report.bytes.get(table)
            self.stdout.write(f"{table:<24}{rows:>12}{'' if copied is None else f'{copied / 1e6:.1f}':>12}")
        if not report.dry_run:
            self.stdout.write(
                f"copying {report.copy_seconds:.2f} s, writes paused {report.pause_seconds * 1000:.0f} ms, "
                f"clean-up {report.cleanup_seconds:.2f} s"
            )
