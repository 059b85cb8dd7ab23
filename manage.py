#!/usr/bin/env python
"""Django's command-line utility for the platform."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flespi_site.settings")
    # A one-off command run beside `make run` uses that run's embedded services.
    from devtools.embedded import attach_environment

    attach_environment()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
