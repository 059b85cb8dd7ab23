"""Development tooling, kept out of the platform's packages: the embedded PostgreSQL, Redis and
MQTT broker (``embedded``), the supervisor of ``make run`` (``supervisor``) and the fetching of
the admin's browser libraries (``vendor``).

It imports no app of the platform (tests/test_devtools_imports.py): only the standard library,
the project's settings and topology where it must, and app code only in child processes
(``manage.py`` commands), as a developer would run them.
"""
