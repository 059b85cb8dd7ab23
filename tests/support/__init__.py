"""What the tests share, one module per subject; each helper is defined here once.

    net          free ports, waiting for a listener
    waiting      polling until a condition holds
    processes    the platform's processes as children on the test databases: environment,
                 output, the web server, the supervisor
    fleet        one region's calc fleet (worker, pump, relay) as child processes
    mqtt         the recording MQTT client, brokers of a test's own
    redis        a region of the test's own on the shared Redis
    concurrency  callables raced on a barrier
    api          assertions on the API's envelope
    admin        the admin's host, quick password hashing, page query counts
    calculators  calculator configurations the tests share
    engine       messages and tracks for the engine tests (no Django)

The benchmarks in ``bench/`` start the platform with ``net``, ``waiting``, ``processes``,
``fleet`` and ``mqtt``: those import neither pytest nor a fixture, and read Django's settings
only inside functions, so that a plain script configures Django first.
"""
